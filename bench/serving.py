"""Gateway overhead and batching throughput of the real local Serve application (tiny dense
builtin model, CPU). Run: `python bench/serving.py [--requests 200] [--seconds 8]`.

- overhead: the same completion (prompt ~11 tokens, 8 new tokens, greedy) sequentially through
  the gateway over HTTP and straight to the model deployment's handle with the calls the gateway
  makes for it (prepare + complete, the whole completion in one reply); p50/p99 of gateway
  latency minus p50/p99 of the direct latency, calls interleaved. The driver's handle uses the
  same Serve settings as the gateway's (`config.SERVE_ENV`). Also timed, not subtracted: the
  direct streamed call (prepare + generate, a Ray message per token) and `prepare` alone.
- throughput: 1, 8 and 32 concurrent clients through the gateway, 64 new tokens per request;
  completion tokens/s; batching gain = tokens/s at 32 clients / at 1 client.
The last line of output is one JSON object with the headline numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from frugalserve.serving import local
from frugalserve.serving.config import SERVE_ENV, model_deployment_name
from frugalserve.serving.engine import SamplingParams

MANIFEST = """\
apiVersion: frugalserve.io/v1alpha1
kind: ModelDeployment
metadata: {name: bench}
spec:
  model: {source: "builtin://tiny-dense"}
  precision: {dtype: float32}
  resources: {gpusPerReplica: 0}
  engine: {maxBatchSize: 32}
  pricing: {inputPerMillionUSD: 1.0, outputPerMillionUSD: 2.0}
---
apiVersion: v1
kind: Secret
metadata: {name: bench-key}
stringData: {api-key: sk-bench}
---
apiVersion: frugalserve.io/v1alpha1
kind: Tenant
metadata: {name: bench}
spec:
  apiKeySecretRef: {name: bench-key}
"""
PROMPT = "The quick brown fox jumps over the lazy dog again"
HEADERS = {"Authorization": "Bearer sk-bench"}


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1]


async def overhead(http: httpx.AsyncClient, n: int) -> dict[str, list[float]]:
    """Latencies (ms) through the gateway, direct (prepare + complete), direct streamed
    (prepare + generate) and of `prepare` alone (the handle call the gateway saves by
    tokenizing itself)."""
    from ray import serve

    handle = serve.get_deployment_handle(model_deployment_name("bench"), app_name=local.APP_NAME)
    stream = handle.options(stream=True)
    body = {"model": "bench", "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    params = SamplingParams(max_tokens=8)
    out: dict[str, list[float]] = {"gateway": [], "direct": [], "stream": [], "prepare": []}
    for i in range(n + 10):
        t = time.perf_counter()
        r = await http.post("/completions", json=body, headers=HEADERS)
        g = time.perf_counter() - t
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8, r.text
        t = time.perf_counter()
        prepared = await handle.prepare.remote(None, PROMPT)
        p = time.perf_counter() - t
        done = await handle.complete.remote(prepared.prompt_ids, params, f"direct-{i}")
        d = time.perf_counter() - t
        assert done.completion_tokens == 8 and done.text == r.json()["choices"][0]["text"]
        t = time.perf_counter()
        prepared = await handle.prepare.remote(None, PROMPT)
        deltas = [x async for x in stream.generate.remote(prepared.prompt_ids, params,
                                                          f"stream-{i}")]
        s = time.perf_counter() - t
        assert deltas[-1].completion_tokens == 8
        if i >= 10:  # warm-up
            for key, seconds in (("gateway", g), ("direct", d), ("stream", s), ("prepare", p)):
                out[key].append(seconds * 1e3)
    return out


async def throughput(http: httpx.AsyncClient, clients: int, seconds: float) -> float:
    body = {"model": "bench", "prompt": PROMPT, "max_tokens": 64, "temperature": 0}
    tokens = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal tokens
        while time.perf_counter() < stop:
            r = await http.post("/completions", json=body, headers=HEADERS)
            assert r.status_code == 200, r.text
            tokens += r.json()["usage"]["completion_tokens"]

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return tokens / (time.perf_counter() - start)


async def measure(base_url: str, n: int, seconds: float) -> dict[str, float]:
    from ray import serve

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http:
            lat = await overhead(http, n)
            tps = {c: await throughput(http, c, seconds) for c in (1, 8, 32)}
    finally:
        await serve.shutdown_async()  # on this loop, which runs the driver handle's router
    gw, direct = lat["gateway"], lat["direct"]
    out = {
        "gateway_p50_ms": statistics.median(gw), "direct_p50_ms": statistics.median(direct),
        "gateway_p99_ms": pct(gw, 99), "direct_p99_ms": pct(direct, 99),
        "direct_stream_p50_ms": statistics.median(lat["stream"]),
        "direct_prepare_p50_ms": statistics.median(lat["prepare"]),
        **{f"tokens_per_s_{c}c": v for c, v in tps.items()},
    }
    out["gateway_overhead_p50_ms"] = out["gateway_p50_ms"] - out["direct_p50_ms"]
    out["gateway_overhead_p99_ms"] = out["gateway_p99_ms"] - out["direct_p99_ms"]
    out["batching_gain_32c"] = tps[32] / tps[1]
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="Sequential calls per path.")
    parser.add_argument("--seconds", type=float, default=8.0, help="Seconds per client level.")
    args = parser.parse_args()
    os.environ.update(SERVE_ENV)  # before Ray loads: this driver's handle routes alike
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "bench.yaml"
        manifest.write_text(MANIFEST)
        plan = local.plan([str(manifest)], Path(tmp) / "state")
        base_url = local.start(plan, port=8765, report=lambda _line: None)
        try:
            result = asyncio.run(measure(base_url, args.requests, args.seconds))
        finally:
            local.stop()
    for key, value in result.items():
        print(f"{key:>26}: {value}")
    print(json.dumps({k: result[k] for k in (
        "gateway_overhead_p50_ms", "gateway_overhead_p99_ms", "batching_gain_32c")}))


if __name__ == "__main__":
    main()
