"""Continuous batching over a fixed set of KV-cache slots.

Each `step` first prefills requests that joined since the last step (one forward each, or on a
GPU several in one), then runs one batched decode forward for every request that was already
running (on a GPU replayed from CUDA graphs, see graphs.py). Requests leave on EOS, a stop
string, `max_tokens` or a full context; `cancel` frees a slot at once. The engine's worker
thread calls `step`; `submit` and `cancel` may be called from any thread.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .decode import CompiledDecode, decode_step, prefill, prefill_batch
from .graphs import GraphDecode, graphs_by_default
from .model import Transformer
from .sampling import SamplingParams, make_generator, sample

PREFILL_TOKENS = 8192  # tokens of one batched prefill forward, padding included (activations)


@dataclass(frozen=True)
class TokenDelta:
    """One streamed step of a request; counts are cumulative and exact (for billing)."""

    text: str  # new text since the previous delta (stop strings never included)
    token_ids: list[int]
    finish_reason: str | None  # None while running; "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int


class TextStream:
    """Incremental detokenization that never emits a stop string or half a UTF-8 character."""

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...]) -> None:
        self._decode = decode
        self._stop = stop
        self.ids: list[int] = []
        self._sent = 0  # characters of the decoded text already emitted

    def push(self, token_id: int, final: bool) -> tuple[str, bool]:
        """Add a token; return (text safe to emit now, whether a stop string was reached)."""
        self.ids.append(token_id)
        text = self._decode(self.ids)
        hits = [i for i in (text.find(s, self._sent) for s in self._stop) if i >= 0]
        if hits:
            return self._emit(text, min(hits)), True
        if final:
            return self._emit(text, len(text)), False
        end = len(text) - self._held_back(text)
        while end > self._sent and text[end - 1] == "\ufffd":  # incomplete multi-byte char
            end -= 1
        return self._emit(text, end), False

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of `text` that could still grow into a stop string."""
        return max((k for s in self._stop for k in range(1, len(s)) if text.endswith(s[:k])),
                   default=0)

    def _emit(self, text: str, end: int) -> str:
        out = text[self._sent:end] if end > self._sent else ""
        self._sent = max(self._sent, end)
        return out


@dataclass(eq=False)
class Request:
    """A request's state while it waits or runs; `emit` receives its deltas (or an error)."""

    id: str
    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[TokenDelta | BaseException], None]
    stream: TextStream
    generator: torch.Generator
    slot: int = -1
    output_ids: list[int] = field(default_factory=list)


class Scheduler:
    """Slots, a waiting queue and the step loop body; thread-safe through one lock."""

    def __init__(self, model: Transformer, decode_text: Callable[[list[int]], str],
                 max_batch_size: int, max_context_tokens: int,
                 compiled: CompiledDecode | None = None,
                 graph_decode: bool | None = None, batch_prefill: bool | None = None) -> None:
        """graph_decode: decode through `GraphDecode`, the padded static-shape step, captured
        into CUDA graphs on a GPU and run eagerly on the CPU (where tests check it).
        batch_prefill: prefill the requests joining in a step together (`prefill_batch`, up
        to PREFILL_TOKENS), not one forward each: on a GPU, where a forward's time is mostly
        kernel launches; MoE models prefill one by one (padding tokens would be routed, and
        counted by the expert telemetry). None, for both: on for a dense model on a GPU."""
        if compiled is not None and max_batch_size != 1:
            raise ValueError("a compiled decode step serves single-slot schedulers only")
        if graph_decode is None:
            graph_decode = compiled is None and graphs_by_default(model)
        if compiled is not None and graph_decode:
            raise ValueError("choose a compiled or a graph decode step, not both")
        if graph_decode and model.args.moe is not None:
            raise ValueError("MoE models decode eagerly: routing reads expert counts back to "
                             "the host, which a CUDA graph cannot replay")
        self.model = model
        self.compiled = compiled  # decodes the one running request when set
        self.graphs = (GraphDecode(model, max_batch_size, max_context_tokens,
                                   capture=model.device.type == "cuda") if graph_decode else None)
        self.batch_prefill = graphs_by_default(model) if batch_prefill is None else batch_prefill
        self.pad_position = max_context_tokens - 1  # never reached: see graphs.py
        self.decode_text = decode_text
        self.max_context_tokens = max_context_tokens
        self.eos_ids = set(model.args.eos_token_ids)
        self.lock = threading.Lock()
        self.free_slots = list(range(max_batch_size))  # a heap: lowest slot first
        self.waiting: deque[Request] = deque()
        self.running: dict[str, Request] = {}
        self.tokens_generated = 0
        self.steps = 0

    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
               emit: Callable[[TokenDelta | BaseException], None]) -> None:
        if not prompt_ids:
            raise ValueError("prompt must have at least one token")
        if len(prompt_ids) >= self.max_context_tokens:
            raise ValueError(f"prompt has {len(prompt_ids)} tokens; the context holds "
                             f"{self.max_context_tokens} including at least one new token")
        request = Request(request_id, list(prompt_ids), params, emit,
                          TextStream(self.decode_text, params.stop),
                          make_generator(params.seed, self.model.device))
        with self.lock:
            if request_id in self.running or any(r.id == request_id for r in self.waiting):
                raise ValueError(f"request id {request_id!r} is already in flight")
            self.waiting.append(request)

    def cancel(self, request_id: str) -> bool:
        """Drop a request now (its slot is free for the next step); True if it was in flight."""
        with self.lock:
            request = self.running.pop(request_id, None)
            if request is not None:
                heapq.heappush(self.free_slots, request.slot)
            else:
                request = next((r for r in self.waiting if r.id == request_id), None)
                if request is None:
                    return False
                self.waiting.remove(request)
        request.emit(self._delta(request, "", [], "cancelled"))
        return True

    def has_work(self) -> bool:
        with self.lock:
            return bool(self.running or self.waiting)

    def step(self) -> None:
        """Prefill the requests that fit into free slots, then decode the others together."""
        with self.lock:
            decoding = sorted(self.running.values(), key=lambda r: r.slot)
            joining = []
            while self.waiting and self.free_slots:
                request = self.waiting.popleft()
                request.slot = heapq.heappop(self.free_slots)
                self.running[request.id] = request
                joining.append(request)
        try:
            for group in self._prefill_groups(joining):  # first tokens out group by group
                self._advance(group, self._prefill(group))
            if decoding:
                self._advance(decoding, self._decode(decoding))
        except Exception as exc:  # the step failed for everyone in it: tell them, free slots
            self._fail([*joining, *decoding], exc)
            raise
        self.steps += 1

    def _prefill_groups(self, joining: list[Request]) -> list[list[Request]]:
        """The joining requests, in order, one per prefill forward, or with batch_prefill as
        many per forward as fit PREFILL_TOKENS once padded to the group's longest prompt."""
        groups: list[list[Request]] = []
        for request in joining:
            group = groups[-1] if groups else []
            width = max(len(r.prompt_ids) for r in [*group, request])
            if self.batch_prefill and group and (len(group) + 1) * width <= PREFILL_TOKENS:
                group.append(request)
            else:
                groups.append([request])
        return groups

    def _prefill(self, group: list[Request]) -> torch.Tensor:
        """Write the group's prompts into their slots: next-token logits [N, V]."""
        if len(group) == 1:
            return prefill(self.model, group[0].prompt_ids, group[0].slot)[None]
        return prefill_batch(self.model, [r.prompt_ids for r in group],
                             [r.slot for r in group], self.pad_position)

    def _decode(self, decoding: list[Request]) -> torch.Tensor:
        """One decode forward for the running requests (sorted by slot): logits [B, V]."""
        if self.compiled is not None:  # a single slot: one request, in slot 0
            (request,) = decoding
            return self.compiled(request.output_ids[-1], self._position(request))
        rows = ([r.output_ids[-1] for r in decoding], [self._position(r) for r in decoding],
                [r.slot for r in decoding])
        return decode_step(self.model, *rows) if self.graphs is None else self.graphs(*rows)

    def _position(self, request: Request) -> int:
        """Cache position of the request's last sampled token (the one fed next)."""
        return len(request.prompt_ids) + len(request.output_ids) - 1

    def _advance(self, requests: list[Request], logits: torch.Tensor) -> None:
        """Sample each request's next token from its row of logits [B, V] and emit it; finish
        the requests that are done."""
        tokens = sample(logits, [r.params for r in requests], [r.generator for r in requests])
        for request, token in zip(requests, tokens, strict=True):
            with self.lock:
                if self.running.get(request.id) is not request:
                    continue  # cancelled while the step ran
                request.output_ids.append(token)
                self.tokens_generated += 1
                reason = self._finish_reason(request, token)
                text, stopped = request.stream.push(token, final=reason is not None)
                reason = "stop" if stopped else reason
                if reason is not None:
                    del self.running[request.id]
                    heapq.heappush(self.free_slots, request.slot)
            request.emit(self._delta(request, text, [token], reason))

    def _finish_reason(self, request: Request, token: int) -> str | None:
        if token in self.eos_ids:
            return "stop"
        n = len(request.output_ids)
        full = len(request.prompt_ids) + n >= self.max_context_tokens
        return "length" if n >= request.params.max_tokens or full else None

    def _fail(self, requests: list[Request], exc: Exception) -> None:
        with self.lock:
            failed = [r for r in requests if self.running.get(r.id) is r]
            for request in failed:
                del self.running[request.id]
                heapq.heappush(self.free_slots, request.slot)
        for request in failed:
            request.emit(exc)

    @staticmethod
    def _delta(request: Request, text: str, ids: list[int], reason: str | None) -> TokenDelta:
        return TokenDelta(text, ids, reason, len(request.prompt_ids), len(request.output_ids))
