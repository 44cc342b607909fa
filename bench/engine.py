"""Benchmark of the frugalserve engine against `transformers.generate` on the same weights.

Run: `python bench/engine.py` (about 9 minutes on 2 cores). Prints a table, writes it as the
engine section of docs/benchmarks.md (replacing the previous one), and prints one JSON object
with the headline ratios as the last line.

Threads are set per configuration, identically for ours and transformers: batch 1 and the
continuous-arrival workload on `--threads` (1: memory-bound decode is as fast on one thread, and
it is the engine's default on 2 cores); batch 16 once per `--batched-threads` count (1, the
engine's default, for the headline, and 2: compute-bound, but it collapses for both engines when
other processes load the second core).
Each speed is the best of `--repeats` alternating runs, since other load only slows a run down;
the load average is printed with the results, since other processes depress every figure.

Batch 1 runs our engine eagerly and with `compile_decode=True` (the decode step through
torch.compile; the headline ratios use it, the eager ones are reported beside them). Compiling
happens in the warm-up, outside the timed runs; its time is reported separately, with
inductor's on-disk cache as this machine has it (a cold compile takes longer).

`--device cuda` runs the GPU benchmark instead (`gpu_main`): a random-weights ~1.1B Llama
(TinyLlama's shape) written by the bench as a bf16 checkpoint, ours (bf16 and int8, each eager
and with the decode step in CUDA graphs) against transformers bf16 at batch 1 and 32, and
batch 1 against the floor set by the device's memory bandwidth (a device-to-device copy
measured in the same run). It prints its table, the graphs' captures (or why capturing failed:
that engine then ran eagerly) and the JSON line only (docs/benchmarks.md is left alone).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

# `python bench/engine.py` puts bench/ first on sys.path, where operator.py (the operator
# benchmark) shadows the stdlib module for subprocesses given this path: inductor's CPU ISA
# check then fails and compiled kernels lose their AVX-512 code (4x slower).
BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]

import psutil  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402

from frugalserve.serving.engine import (  # noqa: E402
    Engine,
    ModelArgs,
    SamplingParams,
    write_checkpoint,
)
from frugalserve.serving.engine.checkpoint import load_model  # noqa: E402
from frugalserve.serving.engine.quantize import (  # noqa: E402
    decode_bytes_per_token,
    swap_linears,
)

ROOT = BENCH_DIR.parent
COMMAND = "python bench/engine.py"
PROMPT_LEN, NEW_TOKENS = 64, 128


@dataclass
class Speed:
    """One measured configuration."""

    name: str
    decode_tok_s: float
    ttft_ms: float
    peak_rss_mib: float
    compile_s: float | None = None  # cold compile of the decode step (compiled configs)

    @property
    def fmt(self) -> str:
        """Weight format: "none" (fp32), "int8" or "int4"."""
        return self.name.split(" ours ")[1].split()[0] if " ours " in self.name else "none"


class PeakRss:
    """Samples this process's RSS every 5 ms while active (the peak of a phase)."""

    def __enter__(self) -> PeakRss:
        self.peak, self._stop = psutil.Process().memory_info().rss, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def checkpoint(name: str, cache: Path) -> Path:
    """A seeded checkpoint of a bench preset without EOS (every run decodes the full length)."""
    path = cache / f"{name}-noeos"
    if not (path / "config.json").is_file():
        write_checkpoint(path, ModelArgs.from_name(name).with_(eos_token_ids=()), seed=0)
    return path


def memory_bandwidth(runs: int = 9) -> float:
    """Read bandwidth (bytes/s), the floor's divisor: the median of `runs` sums of a 256 MiB
    tensor (far beyond the caches) on 1 and on 2 threads, whichever is higher."""
    x = torch.ones(64 * 2**20)
    medians = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        x.sum()  # warm-up
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            x.sum()
            times.append(time.perf_counter() - t)
        medians.append(x.numel() * 4 / statistics.median(times))
    return max(medians)


def prompts(batch: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] + [rng.randrange(3, 500) for _ in range(PROMPT_LEN - 1)] for _ in range(batch)]


# ---------------------------------------------------------------- transformers


class FirstToken(BaseStreamer):
    """Records when generate produced its first new token (the 2nd `put`; the 1st is the prompt)."""

    def __init__(self) -> None:
        self.puts: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.puts.append(time.perf_counter())

    def end(self) -> None:
        pass


def hf_generate(model: torch.nn.Module, batch: list[list[int]], new_tokens: int,
                streamer: FirstToken | None = None) -> None:
    with torch.no_grad():
        model.generate(torch.tensor(batch, device=model.device), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens,
                       do_sample=False, eos_token_id=None, pad_token_id=0, streamer=streamer)


def hf_speed(model: torch.nn.Module, batch: list[list[int]]) -> tuple[float, float]:
    """(decode tokens/s, time to first token in s) of one generate call."""
    streamer = FirstToken() if len(batch) == 1 else None
    t0 = time.perf_counter()
    hf_generate(model, batch, NEW_TOKENS, streamer)
    total = time.perf_counter() - t0
    if streamer is not None:
        ttft = streamer.puts[1] - t0
    else:
        t1 = time.perf_counter()
        hf_generate(model, batch, 1)
        ttft = time.perf_counter() - t1
    return len(batch) * (NEW_TOKENS - 1) / (total - ttft), ttft


# ---------------------------------------------------------------- ours


async def our_speed(engine: Engine, batch: list[list[int]],
                    new_tokens: int = NEW_TOKENS) -> tuple[float, float]:
    """(decode tokens/s, mean time to first token in s) of `batch` concurrent requests."""
    params = SamplingParams(max_tokens=new_tokens)
    t0 = time.perf_counter()
    firsts: list[float] = []

    async def one(prompt: list[int]) -> None:
        async for delta in engine.generate(prompt, params):
            if delta.completion_tokens == 1:
                firsts.append(time.perf_counter())

    await asyncio.gather(*(one(p) for p in batch))
    end = time.perf_counter()
    return len(batch) * (new_tokens - 1) / (end - max(firsts)), statistics.mean(firsts) - t0


def compare(label: str, path: Path, batch_size: int, configs: list[str], repeats: int,
            threads: int, bandwidths: list[float] | None = None) -> list[Speed]:
    """transformers fp32 and our engine (each config: a quantization, "compiled" appended for
    compile_decode), alternating, best of `repeats`; the read bandwidth is sampled into
    `bandwidths` before each round (same load)."""
    batch = prompts(batch_size)
    results: dict[str, list[tuple[float, float]]] = {}
    rss: dict[str, float] = {}
    with PeakRss() as peak:
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        torch.set_num_threads(threads)
        hf_generate(hf, batch, 4)  # warm-up
    rss["hf"] = peak.mib
    engines = {}
    for q in configs:
        with PeakRss() as peak:
            engines[q] = Engine.from_source(f"file://{path}", quantization=q.split()[0],
                                            max_batch_size=batch_size, num_threads=threads,
                                            max_context_tokens=PROMPT_LEN + NEW_TOKENS,
                                            compile_decode=q.endswith(" compiled"))
            asyncio.run(our_speed(engines[q], batch, new_tokens=4))  # warm-up (and compile)
        rss[q] = peak.mib
    for _ in range(repeats):
        if bandwidths is not None:
            bandwidths.append(memory_bandwidth())
            torch.set_num_threads(threads)
        results.setdefault("hf", []).append(hf_speed(hf, batch))
        for q, engine in engines.items():
            results.setdefault(q, []).append(asyncio.run(our_speed(engine, batch)))
    compile_s = {q: e.stats().get("decode_compile_s") for q, e in engines.items()}
    for engine in engines.values():
        asyncio.run(engine.close())
    out = [Speed(f"{label} transformers fp32 b{batch_size}", *best(results["hf"]), rss["hf"])]
    out += [Speed(f"{label} ours {q} b{batch_size}", *best(results[q]), rss[q], compile_s[q])
            for q in configs]
    return out


def best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return max(r[0] for r in runs), 1000 * min(r[1] for r in runs)


# ---------------------------------------------------------------- continuous arrival


@dataclass(frozen=True)
class Arrival:
    at: float
    prompt: list[int]
    max_tokens: int


def arrivals(n: int, window_s: float, seed: int = 1) -> list[Arrival]:
    """n requests, Poisson arrivals over ~window_s, prompts 16-128 tokens, 8-64 new tokens."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(n / window_s)
        prompt = [1] + [rng.randrange(3, 500) for _ in range(rng.randint(15, 127))]
        out.append(Arrival(t, prompt, rng.randint(8, 64)))
    return out


def serial_generate(hf: torch.nn.Module, work: list[Arrival]) -> tuple[float, list[float]]:
    """What a simple server does: one generate at a time, in arrival order."""
    t0, ttfts = time.perf_counter(), []
    for a in work:
        time.sleep(max(0.0, t0 + a.at - time.perf_counter()))
        streamer = FirstToken()
        hf_generate(hf, [a.prompt], a.max_tokens, streamer)
        ttfts.append(streamer.puts[1] - (t0 + a.at))
    return time.perf_counter() - t0, ttfts


async def continuous(engine: Engine, work: list[Arrival]) -> tuple[float, list[float]]:
    t0 = time.perf_counter()

    async def one(a: Arrival) -> float:
        await asyncio.sleep(max(0.0, t0 + a.at - time.perf_counter()))
        ttft = -1.0
        async for _ in engine.generate(a.prompt, SamplingParams(max_tokens=a.max_tokens)):
            if ttft < 0:
                ttft = time.perf_counter() - (t0 + a.at)
        return ttft

    ttfts = await asyncio.gather(*(one(a) for a in work))
    return time.perf_counter() - t0, list(ttfts)


def arrival_bench(path: Path, threads: int) -> list[dict]:
    work = arrivals(64, window_s=6.0)
    tokens = sum(a.max_tokens for a in work)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    torch.set_num_threads(threads)
    serial_s, serial_ttft = serial_generate(hf, work)
    del hf
    gc.collect()
    engine = Engine.from_source(f"file://{path}", max_batch_size=16, num_threads=threads,
                                max_context_tokens=256)
    ours_s, ours_ttft = asyncio.run(continuous(engine, work))
    asyncio.run(engine.close())
    return [{"name": name, "tok_s": tokens / s, "ttft_p50_ms": 1000 * statistics.median(t),
             "ttft_p90_ms": 1000 * statistics.quantiles(t, n=10)[-1], "makespan_s": s}
            for name, s, t in (("serial transformers.generate", serial_s, serial_ttft),
                               ("ours, continuous batching (16 slots)", ours_s, ours_ttft))]


# ---------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="batch 1 and arrival")
    parser.add_argument("--batched-threads", default="1,2",
                        help="batch 16, one run per count; the first one is the headline")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/frugalserve/bench")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda[:N] for the GPU bench")
    opts = parser.parse_args()
    if opts.device != "cpu":
        return gpu_main(opts)
    dense, moe = checkpoint("bench-dense", opts.cache), checkpoint("bench-moe", opts.cache)
    load_before = os.getloadavg()
    torch.set_num_threads(opts.threads)
    bandwidths: list[float] = []
    b1 = ["none", "int8", "int4", "none compiled", "int8 compiled", "int4 compiled"]
    speeds = compare("dense", dense, 1, b1, opts.repeats, opts.threads, bandwidths)
    bandwidth = statistics.median(bandwidths)
    batched = max(1, opts.repeats - 1)
    threads_b16 = [int(t) for t in opts.batched_threads.split(",")]
    for t in threads_b16:
        tag = "" if t == threads_b16[0] else f" {t}-thread"
        speeds += compare(f"dense{tag}", dense, 16, ["none"], batched, t)
        speeds += compare(f"moe{tag}", moe, 16, ["none"], batched, t)
    floors = floor_table(dense, bandwidth)
    arrival = arrival_bench(dense, opts.threads)
    loads = (load_before, os.getloadavg())
    s = {sp.name: sp for sp in speeds}
    hf_b1 = s["dense transformers fp32 b1"].decode_tok_s
    headline = {
        "fp32_b1_vs_hf": s["dense ours none compiled b1"].decode_tok_s / hf_b1,
        "fp32_b1_floor_pct": 100 * s["dense ours none compiled b1"].decode_tok_s / floors["none"],
        "int8_b1_vs_hf_fp32": s["dense ours int8 compiled b1"].decode_tok_s / hf_b1,
        "int8_b1_floor_pct": 100 * s["dense ours int8 compiled b1"].decode_tok_s / floors["int8"],
        "fp32_b1_eager_vs_hf": s["dense ours none b1"].decode_tok_s / hf_b1,
        "int8_b1_eager_vs_hf_fp32": s["dense ours int8 b1"].decode_tok_s / hf_b1,
        **{f"compile_s_{q}": s[f"dense ours {q} compiled b1"].compile_s
           for q in ("none", "int8", "int4")},
        "moe_b16_vs_hf": s["moe ours none b16"].decode_tok_s
        / s["moe transformers fp32 b16"].decode_tok_s,
        "fp32_b16_vs_hf": s["dense ours none b16"].decode_tok_s
        / s["dense transformers fp32 b16"].decode_tok_s,
        **{f"{kind}_b16_{t}t_vs_hf": s[f"{kind} {t}-thread ours none b16"].decode_tok_s
           / s[f"{kind} {t}-thread transformers fp32 b16"].decode_tok_s
           for t in threads_b16[1:] for kind in ("moe", "dense")},
        "arrival_vs_serial": arrival[1]["tok_s"] / arrival[0]["tok_s"],
        "arrival_ttft_p50_ratio": arrival[1]["ttft_p50_ms"] / arrival[0]["ttft_p50_ms"],
    }
    headline = {k: round(v, 3) for k, v in headline.items()}
    text = report(speeds, floors, bandwidth, arrival, headline, opts, loads)
    print(text)
    append_docs(text)
    print(json.dumps(headline))


def floor_table(path: Path, bandwidth: float) -> dict[str, float]:
    """Batch-1 tokens/s floor = bandwidth / weight bytes read per decode step, per format."""
    return {q: bandwidth / decode_bytes_per_token(swap_linears(load_model(path), q))
            for q in ("none", "int8", "int4")}


def report(speeds: list[Speed], floors: dict[str, float], bandwidth: float, arrival: list[dict],
           headline: dict, opts: argparse.Namespace,
           loads: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    load = " -> ".join("/".join(f"{v:.1f}" for v in la) for la in loads)
    lines = [f"## Engine ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", "",
             f"Command: `{COMMAND}`; torch {torch.__version__}, {psutil.cpu_count()} cores; "
             f"threads (both engines): batch 1 and arrival {opts.threads}, batch 16 "
             f"{opts.batched_threads.split(',')[0]} (other counts labelled); prompt "
             f"{PROMPT_LEN}, {NEW_TOKENS} new tokens, greedy; read bandwidth "
             f"{bandwidth / 1e9:.1f} GB/s (sampled before each batch-1 round: median of 9 sums "
             f"of 256 MiB on 1 and on 2 threads, the higher; median over rounds); load "
             f"average (1/5/15 min) before -> after: {load}.",
             "",
             "| configuration | decode tok/s | TTFT ms | peak RSS MiB | % of b1 floor |",
             "|---|---:|---:|---:|---:|"]
    for sp in speeds:
        pct = f"{100 * sp.decode_tok_s / floors[sp.fmt]:.0f}%" if sp.name.endswith(" b1") else ""
        lines.append(f"| {sp.name} | {sp.decode_tok_s:.1f} | {sp.ttft_ms:.1f} | "
                     f"{sp.peak_rss_mib:.0f} | {pct} |")
    compiles = [f"{sp.fmt} {sp.compile_s:.1f} s" for sp in speeds if sp.compile_s is not None]
    lines += ["", "Batch-1 floors (tok/s): " + ", ".join(f"{q} {v:.0f}" for q, v in floors.items()),
              "", "Decode-step compile (in the warm-up, not timed; inductor's on-disk cache as "
              "found): " + ", ".join(compiles) + "; peak RSS of compiled configs includes it "
              "and the frozen graph's packed copy of the weights.",
              "", "Continuous arrival: 64 requests, Poisson over 6 s, prompts 16-128, 8-64 new:",
              "", "| server | tok/s | TTFT p50 ms | TTFT p90 ms | makespan s |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {a['name']} | {a['tok_s']:.1f} | {a['ttft_p50_ms']:.0f} | "
              f"{a['ttft_p90_ms']:.0f} | {a['makespan_s']:.1f} |" for a in arrival]
    lines += ["", "```json", json.dumps(headline), "```", ""]
    return "\n".join(lines)


def append_docs(text: str) -> None:
    """Write this run as the engine section of docs/benchmarks.md, replacing the previous
    engine section (other benchmarks' sections stay as they are)."""
    docs = ROOT / "docs" / "benchmarks.md"
    docs.parent.mkdir(exist_ok=True)
    old = docs.read_text() if docs.exists() else "# Benchmarks\n"
    kept, skipping = [], False
    for line in old.splitlines(keepends=True):
        if line.startswith("## "):
            skipping = line.startswith("## Engine (")
        if not skipping:
            kept.append(line)
    docs.write_text("".join(kept).rstrip("\n") + "\n\n" + text)


# ---------------------------------------------------------------- GPU

# TinyLlama-1.1B's shape, without EOS (every run decodes the full length): ~1.1B parameters.
GPU_ARGS = ModelArgs(vocab_size=32000, dim=2048, n_layers=22, n_heads=32, n_kv_heads=4,
                     intermediate_size=5632, max_seq_len=2048, eos_token_ids=())
GPU_BATCHES = (1, 32)
# our configurations: name -> (quantization, cuda_graphs)
GPU_ENGINES = {"ours bf16 eager": ("none", False), "ours bf16 graphs": ("none", True),
               "ours int8 eager": ("int8", False), "ours int8 graphs": ("int8", True)}


def copy_bandwidth(device: torch.device, nbytes: int = 2**30, runs: int = 10) -> float:
    """Device-to-device copy of `nbytes` (bytes read + written per second, the median of
    `runs`, timed with CUDA events): the memory bandwidth the batch-1 floor divides by."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * nbytes / statistics.median(times)


def gpu_compare(path: Path, device: str, repeats: int) -> tuple[list[dict], dict[str, dict]]:
    """transformers bf16 and our engines (GPU_ENGINES) at each batch size, alternating, best of
    `repeats`; one engine per configuration serves every batch size (its slots: the largest).
    Returns the rows and each graphs engine's `stats()["decode_graphs"]` (captures, failure)."""
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(device).eval()
    engines = {name: Engine.from_source(f"file://{path}", dtype="bfloat16", quantization=q,
                                        max_batch_size=max(GPU_BATCHES), device=device,
                                        max_context_tokens=PROMPT_LEN + NEW_TOKENS,
                                        cuda_graphs=graphs)
               for name, (q, graphs) in GPU_ENGINES.items()}
    rows = []
    for size in GPU_BATCHES:
        batch = prompts(size)
        hf_generate(hf, batch, 4)  # warm-up (kernels, allocator)
        for name, engine in engines.items():  # warm-up; graphs: every length bucket captured
            new_tokens = NEW_TOKENS if GPU_ENGINES[name][1] else 4
            asyncio.run(our_speed(engine, batch, new_tokens=new_tokens))
        runs: dict[str, list[tuple[float, float]]] = {}
        for _ in range(repeats):
            runs.setdefault("transformers bf16", []).append(hf_speed(hf, batch))
            for name, engine in engines.items():
                runs.setdefault(name, []).append(asyncio.run(our_speed(engine, batch)))
        for name, results in runs.items():
            tok_s, ttft_ms = best(results)
            rows.append({"name": name, "batch": size, "tok_s": tok_s, "ttft_ms": ttft_ms})
            print(f"  {name} b{size}: {tok_s:.1f} tok/s, TTFT {ttft_ms:.1f} ms", flush=True)
    graphs = {name: engine.stats().get("decode_graphs", {}) for name, engine in engines.items()
              if GPU_ENGINES[name][1]}
    for engine in engines.values():
        asyncio.run(engine.close())
    return rows, graphs


def gpu_main(opts: argparse.Namespace) -> None:
    device = torch.device(opts.device)
    name = torch.cuda.get_device_name(device)
    path = opts.cache / "gpu-llama-1b-bf16-noeos"
    if not (path / "config.json").is_file():
        write_checkpoint(path, GPU_ARGS, seed=0, dtype=torch.bfloat16)
    model = load_model(path, device=device)
    params = sum(p.numel() for p in model.parameters())
    per_token = {q: decode_bytes_per_token(swap_linears(model, q)) for q in ("none", "int8")}
    del model  # swapped in place to int8 by the second entry; floors only needed its size
    torch.cuda.empty_cache()
    bandwidth = copy_bandwidth(device)
    floors = {q: bandwidth / n for q, n in per_token.items()}  # batch-1 tok/s
    print(f"{name}, torch {torch.__version__}: {params / 1e9:.2f}B params, copy bandwidth "
          f"{bandwidth / 1e12:.2f} TB/s, batch-1 floors: bf16 {floors['none']:.0f}, int8 "
          f"{floors['int8']:.0f} tok/s", flush=True)
    rows, graphs = gpu_compare(path, opts.device, opts.repeats)
    r = {(row["name"], row["batch"]): row for row in rows}
    fmt = {"transformers bf16": "none"} | {n: q for n, (q, _) in GPU_ENGINES.items()}
    lines = ["", f"## Engine on {name} ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", "",
             f"Command: `{COMMAND} --device {opts.device}`; torch {torch.__version__}; "
             f"random-weights Llama of {params / 1e9:.2f}B parameters (TinyLlama's shape), "
             f"bf16 checkpoint; prompt {PROMPT_LEN}, {NEW_TOKENS} new tokens, greedy; best of "
             f"{opts.repeats}; copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + written); "
             f"ours eager (cuda_graphs=False) and with the decode step in CUDA graphs; both "
             f"prefill the requests joining in one step together.", "",
             "| configuration | batch | decode tok/s | TTFT ms | % of b1 floor |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        pct = (f"{100 * row['tok_s'] / floors[fmt[row['name']]]:.0f}%" if row["batch"] == 1
               else "")
        lines.append(f"| {row['name']} | {row['batch']} | {row['tok_s']:.1f} | "
                     f"{row['ttft_ms']:.1f} | {pct} |")
    lines.append("")
    for engine_name, g in graphs.items():  # a failed capture leaves that engine eager
        state = (f"capture FAILED, ran eagerly: {g['failure']}" if g["failure"] else
                 f"{len(g['captured'])} graphs (batch, length) {g['captured']} captured in "
                 f"{g['capture_s']:.2f} s")
        lines.append(f"{engine_name}: {state}")
    print("\n".join(lines))
    headline: dict = {"device": name, "params_b": params / 1e9, "copy_tb_s": bandwidth / 1e12}
    for size in GPU_BATCHES:
        hf_row = r["transformers bf16", size]
        headline[f"hf_bf16_b{size}_tok_s"] = hf_row["tok_s"]
        for key in GPU_ENGINES:
            label = key.removeprefix("ours ").replace(" ", "_")
            headline[f"{label}_b{size}_tok_s"] = r[key, size]["tok_s"]
            headline[f"{label}_b{size}_vs_hf_bf16"] = r[key, size]["tok_s"] / hf_row["tok_s"]
            headline[f"{label}_b{size}_ttft_ms"] = r[key, size]["ttft_ms"]
        headline[f"hf_bf16_b{size}_ttft_ms"] = hf_row["ttft_ms"]
    for key in ("transformers bf16", *GPU_ENGINES):
        label = "hf_bf16" if key == "transformers bf16" else key.removeprefix("ours ")
        headline[f"{label.replace(' ', '_')}_b1_floor_pct"] = (
            100 * r[key, 1]["tok_s"] / floors[fmt[key]])
    for engine_name, g in graphs.items():
        label = engine_name.removeprefix("ours ").replace(" ", "_")
        headline[f"{label}_capture_s"] = g["capture_s"]
        headline[f"{label}_failure"] = g["failure"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                      for k, v in headline.items()}))

if __name__ == "__main__":
    sys.exit(main())
