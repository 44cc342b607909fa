"""How the gateway reaches a model: `ModelClient`, implemented in-process over an engine
(`EngineClient`, used by the model deployment itself and by fast tests with a fake engine) and
over a Ray Serve deployment handle (`HandleClient`, used by the gateway deployment). Streaming
requests receive the engine's deltas one by one; non-streaming ones one `Completion`, which
spares a Ray message per token between the deployments."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol, cast

from frugalserve.serving.config import ModelConfig
from frugalserve.serving.engine import SamplingParams, TokenDelta, resolve_source
from frugalserve.serving.engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A tokenized prompt and the model's context limit."""

    prompt_ids: list[int]
    max_context_tokens: int


@dataclass(frozen=True)
class Completion:
    """A generation returned whole: its text, how it ended and the exact counts of the last
    delta produced. `first_token_s` is the wait for the first delta (None if there was none);
    `error` describes an engine failure part way, the counts being what it produced before."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float | None
    error: str | None = None


class EngineFailed(RuntimeError):
    """The engine failed part way through a generation (`Completion.error`)."""


async def collect(deltas: AsyncGenerator[TokenDelta, None], prompt_tokens: int) -> Completion:
    """Run `deltas` to the end (closing it if cancelled, which frees the engine's slot)."""
    start = time.monotonic()
    text: list[str] = []
    first: float | None = None
    last: TokenDelta | None = None
    error = None
    async with aclosing(deltas):
        try:
            async for delta in deltas:
                if first is None:
                    first = time.monotonic() - start
                text.append(delta.text)
                last = delta
        except Exception as exc:
            log.exception("generation failed after %d token(s)",
                          last.completion_tokens if last else 0)
            error = f"{type(exc).__name__}: {exc}"
    return Completion("".join(text), last.finish_reason if last else None,
                      last.prompt_tokens if last else prompt_tokens,
                      last.completion_tokens if last else 0, first, error)


class TextEncoder(Protocol):
    """A model's tokenizer and chat template (`engine.Engine` and `engine.tokenizer.Tokenizer`)."""

    def encode(self, text: str) -> list[int]: ...
    def apply_chat_template(self, messages: list[dict[str, str]]) -> str: ...


class EngineLike(TextEncoder, Protocol):
    """The part of `engine.Engine` the serving layer uses (a fake engine implements it too)."""

    model_name: str
    max_context_tokens: int

    def generate(self, prompt_ids: list[int], params: SamplingParams,
                 request_id: str | None = None) -> AsyncIterator[TokenDelta]: ...
    def stats(self) -> dict[str, Any]: ...


class ModelClient(Protocol):
    """One model as the gateway calls it."""

    async def prepare(self, messages: list[dict[str, str]] | None,
                      prompt: str | None) -> Prepared: ...
    def generate(self, prompt_ids: list[int], params: SamplingParams,
                 request_id: str) -> AsyncGenerator[TokenDelta, None]: ...
    async def complete(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str) -> Completion: ...
    async def stats(self) -> dict[str, Any]: ...


def tokenize(encoder: TextEncoder, context: int, messages: list[dict[str, str]] | None,
             prompt: str | None) -> Prepared:
    """Exact prompt tokens with the model's own tokenizer and chat template."""
    text = encoder.apply_chat_template(messages) if messages is not None else prompt or ""
    return Prepared(encoder.encode(text), context)


def load_tokenizer(model: ModelConfig) -> Tokenizer | None:
    """The tokenizer of the model's checkpoint, loaded as the engine loads it, for tokenizing
    in the gateway; None (tokenize on the model deployment) where the gateway cannot read the
    checkpoint, e.g. a PVC mounted only on the model's nodes."""
    try:
        return Tokenizer.from_dir(resolve_source(model.source, revision=model.revision))
    except Exception as exc:
        log.warning("model %s: tokenizing on the model deployment (no local tokenizer: %s)",
                    model.name, exc)
        return None


class EngineClient:
    """A model served by an engine in this process."""

    def __init__(self, engine: EngineLike) -> None:
        self.engine = engine

    async def prepare(self, messages: list[dict[str, str]] | None,
                      prompt: str | None) -> Prepared:
        return tokenize(self.engine, self.engine.max_context_tokens, messages, prompt)

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str) -> AsyncGenerator[TokenDelta, None]:
        deltas = cast(AsyncGenerator[TokenDelta, None],
                      self.engine.generate(prompt_ids, params, request_id))
        async with aclosing(deltas):
            async for delta in deltas:
                yield delta

    async def complete(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str) -> Completion:
        return await collect(self.generate(prompt_ids, params, request_id), len(prompt_ids))

    async def stats(self) -> dict[str, Any]:
        return self.engine.stats()


class HandleClient:
    """A model served by a Ray Serve deployment (`serving.model_server.ModelServer`). With the
    checkpoint's `tokenizer`, prompts are tokenized here, saving a handle call per request;
    the deployment is asked once for its context limit."""

    def __init__(self, handle: Any, tokenizer: Tokenizer | None = None) -> None:
        self.handle = handle
        self._stream = handle.options(stream=True)
        self._tokenizer = tokenizer
        self._context: int | None = None

    async def prepare(self, messages: list[dict[str, str]] | None,
                      prompt: str | None) -> Prepared:
        if self._tokenizer is None or self._context is None:
            prepared: Prepared = await self.handle.prepare.remote(messages, prompt)
            self._context = prepared.max_context_tokens
            return prepared
        return tokenize(self._tokenizer, self._context, messages, prompt)

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str) -> AsyncGenerator[TokenDelta, None]:
        response = self._stream.generate.remote(prompt_ids, params, request_id)
        try:
            async for delta in response:
                yield delta
        finally:
            response.cancel()

    async def complete(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str) -> Completion:
        response = self.handle.complete.remote(prompt_ids, params, request_id)
        try:
            result: Completion = await response
        except asyncio.CancelledError:
            response.cancel()  # the deployment closes the generation, freeing its slot
            raise
        return result

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self.handle.stats.remote()
        return stats
