"""The batched decode step replayed from CUDA graphs (as in gpt-fast and vLLM): the scheduler
calls `GraphDecode` instead of `decode.decode_step` for a dense model on a GPU.

Inside a graph every shape is fixed. The running rows are padded to a batch bucket (1, 2, 4,
... up to the slot count); attention reads the first L cached keys of each row's slot, L a
length bucket (a power of two >= 64, at most the cache length), under a mask built from the
rows' positions; tokens, positions and slots are copied into one static buffer before each
replay. A padding row feeds token 0 at the pad position (max_context_tokens - 1) of slot 0: a
cache entry no request writes or reads, since the scheduler ends a request whose context is
full, so its last fed token sits at max_context_tokens - 2 at most.

MoE models stay eager: routing sizes each expert's matmul from counts read back to the host,
which a graph cannot replay. A capture that fails logs a warning and the step stays eager.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import Tensor

from .decode import decode_step
from .model import Batch, Transformer, attention_mask

log = logging.getLogger(__name__)

SMALLEST_LENGTH = 64  # the first length bucket


def graphs_by_default(model: Transformer) -> bool:
    """CUDA graphs are on by default where they can be captured: a dense model on a GPU."""
    return model.device.type == "cuda" and model.args.moe is None


def batch_buckets(max_batch: int) -> list[int]:
    """The padded batch sizes: powers of two below max_batch, then max_batch (6 -> 1, 2, 4, 6)."""
    return [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch] + [max_batch]


def length_bucket(length: int, cache_len: int) -> int:
    """Keys read by a step whose highest position is length - 1: the next power of two (at
    least SMALLEST_LENGTH), at most the whole cache."""
    return min(cache_len, max(SMALLEST_LENGTH, 1 << (length - 1).bit_length()))


class GraphDecode:
    """`decode_step` on padded, static shapes; with `capture` (the default on a GPU) each
    (batch, length) bucket is captured into a CUDA graph on first use and replayed after.

    Without `capture` the same padded step runs eagerly: on the CPU, tests check it against
    `decode_step` (the formulation the graphs capture, proven without a GPU)."""

    def __init__(self, model: Transformer, max_batch: int, max_context_tokens: int,
                 capture: bool = True) -> None:
        cache = model.layers[0].attention.kv_cache
        assert cache is not None, "call Transformer.setup_cache first"
        slots, _, self.cache_len, _ = cache.k.shape
        if max_batch > slots or max_context_tokens > self.cache_len:
            raise ValueError(f"{max_batch=} and {max_context_tokens=} exceed the KV cache "
                             f"({slots} slots of {self.cache_len} tokens)")
        if capture and model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the model is on {model.device}")
        self.model = model
        self.capture = capture
        self.buckets = batch_buckets(max_batch)
        self.pad_position = max_context_tokens - 1
        # one row per padded batch row: token, position, slot (the graphs read it in place)
        self.inputs = torch.zeros(max_batch, 3, dtype=torch.long, device=model.device)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self.capture_s = 0.0  # wall time of all captures so far
        self.failure: str | None = None  # why capturing failed (the step is eager since)
        # the memory pool every graph of this step shares: safe since one graph runs at a
        # time and each output is copied out at once (another graph may reuse its memory)
        self._pool = None
        self._stream = torch.cuda.Stream(model.device) if capture else None

    @torch.inference_mode()
    def __call__(self, token_ids: list[int], positions: list[int], slots: list[int]) -> Tensor:
        """Feed one token per row (row i: token_ids[i] at positions[i] in slots[i]); logits
        [B, V], as `decode_step`."""
        n = len(token_ids)
        size = next(b for b in self.buckets if b >= n)
        length = length_bucket(max(positions) + 1, self.cache_len)
        if not self.capture:
            self._fill(token_ids, positions, slots, size)
            return self._forward(size, length)[:n]
        with torch.cuda.device(self.model.device):
            captured = self._graph(size, length) if self.failure is None else None
            if captured is not None:
                graph, logits = captured
                self._fill(token_ids, positions, slots, size)
                graph.replay()
                return logits[:n].clone()  # the graph's output is rewritten by its next replay
        return decode_step(self.model, token_ids, positions, slots)

    def _fill(self, token_ids: list[int], positions: list[int], slots: list[int],
              size: int) -> None:
        """Copy the rows into the static buffer, padding rows up to `size`."""
        pad = size - len(token_ids)
        rows = list(zip(token_ids, positions, slots, strict=True))
        rows += [(0, self.pad_position, 0)] * pad
        self.inputs[:size].copy_(torch.tensor(rows))  # [size, 3]

    def _forward(self, size: int, length: int) -> Tensor:
        """The padded step over the first `size` rows of the static buffer: logits [size, V]."""
        rows = self.inputs[:size]  # [size, 3]
        positions = rows[:, 1:2]  # [size, 1]
        batch = Batch(rows[:, 2], positions, None, length, aligned=False)
        mask = attention_mask(positions, length)  # [size, 1, 1, length]
        return self.model.run(rows[:, :1], batch, length, mask)[:, 0]  # [size, 1, V] -> [size, V]

    def _graph(self, size: int, length: int) -> tuple[torch.cuda.CUDAGraph, Tensor] | None:
        """The graph of a bucket and its output buffer, captured on first use (with every row
        padding, so its warm-up runs write only the pad entry); None if the capture failed
        (logged, and recorded in `failure`)."""
        key = (size, length)
        if key in self.graphs:
            return self.graphs[key]
        start = time.perf_counter()
        self._fill([], [], [], size)
        graph = torch.cuda.CUDAGraph()
        stream = self._stream
        assert stream is not None
        stream.wait_stream(torch.cuda.current_stream())
        try:
            # the outer stream context restores the current stream even if capture_end fails
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the capture: kernels load, cuBLAS plans
                    self._forward(size, length)
                with torch.cuda.graph(graph, pool=self._pool, stream=stream,
                                      capture_error_mode="thread_local"):
                    logits = self._forward(size, length)
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            log.warning("CUDA graph capture of the decode step (batch %d, length %d) failed; "
                        "decoding eagerly from now on: %s", size, length, self.failure)
            return None
        finally:
            torch.cuda.current_stream().wait_stream(stream)
        self._pool = graph.pool()
        self.graphs[key] = (graph, logits)
        self.capture_s += time.perf_counter() - start
        return self.graphs[key]

    def stats(self) -> dict:
        return {"captured": sorted(self.graphs), "capture_s": round(self.capture_s, 3),
                "failure": self.failure}
