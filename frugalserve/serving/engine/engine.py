"""The engine the model server calls: load a model source, stream generations, report stats.

One worker thread per engine runs the scheduler's step loop, so torch never blocks the event
loop; each `generate` call joins the shared running batch and receives its deltas through an
asyncio queue fed with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable

import torch

from .checkpoint import load_model, resolve_source
from .decode import CompiledDecode
from .model import Transformer
from .quantize import Quantization, as_dtype, swap_linears, weight_bytes
from .sampling import SamplingParams
from .scheduler import Scheduler, TokenDelta
from .telemetry import ExpertTelemetry
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' -> the torch device, with the GPU index made explicit; a
    ValueError naming the `device` parameter for anything else or a GPU that is not there."""
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise ValueError(f"device={device!r} is not supported; use 'cpu', 'cuda' or 'cuda:N'")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r} needs a CUDA GPU, but torch "
                         f"{torch.__version__} sees none (torch.cuda.is_available() is False)")
    dev = torch.device(device)
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: this process sees only "
                         f"{torch.cuda.device_count()} GPU(s)")
    return torch.device("cuda", index)


def default_threads() -> int:
    """Leave one core to the server's own threads: one decode at batch 1 is as fast on one
    thread as on two, and two threads collapse when another process loads the second core."""
    return max(1, (os.cpu_count() or 2) - 1)


class Engine:
    """A loaded model, its tokenizer and a continuous-batching worker; see `from_source`."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, *, model_name: str,
                 max_batch_size: int, max_context_tokens: int,
                 compile_decode: bool = False, cuda_graphs: bool | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_context_tokens = max_context_tokens
        self.max_batch_size = max_batch_size
        self.architecture = model.args.architecture
        self.device = model.device
        model.setup_cache(max_batch_size, max_context_tokens)
        if compile_decode and max_batch_size != 1:
            raise ValueError("compile_decode needs max_batch_size=1 (the batch-1 decode step)")
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device; the model is on {self.device}")
        self.compiled = CompiledDecode(model) if compile_decode else None
        self.scheduler = Scheduler(model, tokenizer.decode, max_batch_size, max_context_tokens,
                                   self.compiled, graph_decode=cuda_graphs)
        self.telemetry = ExpertTelemetry(model) if model.args.moe is not None else None
        self._wake = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None

    @classmethod
    def from_source(cls, source: str, *, dtype: str = "float32",
                    quantization: Quantization | str = "none", max_batch_size: int = 8,
                    max_context_tokens: int | None = None, revision: str | None = None,
                    device: str = "cpu", cache_dir: str | os.PathLike | None = None,
                    progress: Callable[[str], None] | None = None,
                    num_threads: int | None = None, compile_decode: bool = False,
                    cuda_graphs: bool | None = None) -> Engine:
        """Load `builtin://NAME`, `file:///dir`, `pvc://claim/path` or `hf://org/name`.

        dtype: float32 | bfloat16 | float16 | auto (the checkpoint's). device: cpu | cuda |
        cuda:N; the weights are read from their files straight onto it, and the KV cache lives
        there. num_threads: torch intra-op threads for the process (default: all cores but
        one; on a GPU they only serve host-side work). compile_decode (CPU only, needs
        max_batch_size=1): run the decode step through torch.compile, compiled on the first
        request (tens of seconds on 2 cores; `stats()["decode_compile_s"]`), ~1.4x (fp32) to
        ~1.9x (int8) faster per token on the bench model. cuda_graphs: replay the batched
        decode step from CUDA graphs, one per (batch, cache length) bucket, captured on first
        use (`stats()["decode_graphs"]`); None: on for a dense model on a GPU; MoE models
        always decode eagerly. A capture that fails is logged and the step stays eager. On a
        GPU the requests joining in one step also prefill together (dense models)."""
        if compile_decode and device != "cpu":
            raise ValueError(f"compile_decode runs on the CPU only; got device={device!r}")
        dev = resolve_device(device)
        report = progress or (lambda _msg: None)
        torch.set_num_threads(num_threads or default_threads())
        path = resolve_source(source, revision=revision, cache_dir=cache_dir)
        report(f"loading {source} from {path} onto {dev}")
        model = load_model(path, None if dtype == "auto" else as_dtype(dtype), dev)
        tokenizer = Tokenizer.from_dir(path)
        if tokenizer.vocab_size > model.args.vocab_size:
            raise ValueError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens, the model "
                             f"only {model.args.vocab_size}")
        swap_linears(model, quantization, max_batch=max_batch_size)
        mib = weight_bytes(model) / 2**20
        report(f"weights ready: {mib:.1f} MiB ({Quantization(quantization).value})")
        context = min(max_context_tokens or model.args.max_seq_len, model.args.max_seq_len)
        return cls(model, tokenizer, model_name=source, max_batch_size=max_batch_size,
                   max_context_tokens=context, compile_decode=compile_decode,
                   cuda_graphs=cuda_graphs)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages)

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[TokenDelta]:
        """Stream deltas of one request; closing or cancelling the iterator frees its slot."""
        if self._closed:
            raise RuntimeError("engine is closed")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TokenDelta | BaseException] = asyncio.Queue()
        rid = request_id or uuid.uuid4().hex

        def emit(item: TokenDelta | BaseException) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(queue.put_nowait, item)

        self.scheduler.submit(rid, prompt_ids, params, emit)
        self._start_worker()
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finish_reason is not None
                yield item
        finally:
            if not finished:
                self.scheduler.cancel(rid)

    def cancel(self, request_id: str) -> bool:
        """Stop a request now; its stream ends with finish_reason "cancelled"."""
        return self.scheduler.cancel(request_id)

    def stats(self) -> dict:
        s = self.scheduler
        with s.lock:
            out: dict = {"model": self.model_name, "architecture": self.architecture,
                         "device": str(self.device), "running": len(s.running),
                         "waiting": len(s.waiting), "free_slots": len(s.free_slots),
                         "max_batch_size": self.max_batch_size,
                         "tokens_generated": s.tokens_generated, "steps": s.steps}
        if self.compiled is not None:
            out["decode_compile_s"] = self.compiled.compile_s  # None until the first decode
        if s.graphs is not None:
            out["decode_graphs"] = s.graphs.stats()
        if self.telemetry is not None:
            out["moe"] = self.telemetry.stats()
        return out

    async def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._worker is not None:
            await asyncio.to_thread(self._worker.join)
        with self.scheduler.lock:
            ids = [*self.scheduler.running, *(r.id for r in self.scheduler.waiting)]
        for rid in ids:
            self.scheduler.cancel(rid)

    def _start_worker(self) -> None:
        with self._wake:
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="engine-step", daemon=True)
                self._worker.start()
            self._wake.notify_all()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self.scheduler.has_work():
                    self._wake.wait()
                if self._closed:
                    return
            try:
                self.scheduler.step()
            except Exception:  # already delivered to the requests of that step
                log.exception("engine step failed")
            if self.telemetry is not None:
                self.telemetry.record_step()

