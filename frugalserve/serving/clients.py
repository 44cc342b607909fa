"""How the gateway reaches a model: `ModelClient`, implemented in-process over an engine
(`EngineClient`, used by the model deployment itself and by fast tests with a fake engine) and
over a Ray Serve deployment handle (`HandleClient`, used by the gateway deployment)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol, cast

from frugalserve.serving.engine import SamplingParams, TokenDelta


@dataclass(frozen=True)
class Prepared:
    """A tokenized prompt and the model's context limit."""

    prompt_ids: list[int]
    max_context_tokens: int


class EngineLike(Protocol):
    """The part of `engine.Engine` the serving layer uses (a fake engine implements it too)."""

    model_name: str
    max_context_tokens: int

    def encode(self, text: str) -> list[int]: ...
    def apply_chat_template(self, messages: list[dict[str, str]]) -> str: ...
    def generate(self, prompt_ids: list[int], params: SamplingParams,
                 request_id: str | None = None) -> AsyncIterator[TokenDelta]: ...
    def stats(self) -> dict[str, Any]: ...


class ModelClient(Protocol):
    """One model as the gateway calls it."""

    async def prepare(self, messages: list[dict[str, str]] | None,
                      prompt: str | None) -> Prepared: ...
    def generate(self, prompt_ids: list[int], params: SamplingParams,
                 request_id: str) -> AsyncGenerator[TokenDelta, None]: ...
    async def stats(self) -> dict[str, Any]: ...


def tokenize(engine: EngineLike, messages: list[dict[str, str]] | None,
             prompt: str | None) -> Prepared:
    """Exact prompt tokens with the model's own tokenizer and chat template."""
    text = engine.apply_chat_template(messages) if messages is not None else prompt or ""
    return Prepared(engine.encode(text), engine.max_context_tokens)


class EngineClient:
    """A model served by an engine in this process."""

    def __init__(self, engine: EngineLike) -> None:
        self.engine = engine

    async def prepare(self, messages: list[dict[str, str]] | None,
                      prompt: str | None) -> Prepared:
        return tokenize(self.engine, messages, prompt)

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str) -> AsyncGenerator[TokenDelta, None]:
        deltas = cast(AsyncGenerator[TokenDelta, None],
                      self.engine.generate(prompt_ids, params, request_id))
        async with aclosing(deltas):
            async for delta in deltas:
                yield delta

    async def stats(self) -> dict[str, Any]:
        return self.engine.stats()


class HandleClient:
    """A model served by a Ray Serve deployment (`serving.model_server.ModelServer`)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self._stream = handle.options(stream=True)

    async def prepare(self, messages: list[dict[str, str]] | None,
                      prompt: str | None) -> Prepared:
        prepared: Prepared = await self.handle.prepare.remote(messages, prompt)
        return prepared

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str) -> AsyncGenerator[TokenDelta, None]:
        response = self._stream.generate.remote(prompt_ids, params, request_id)
        try:
            async for delta in response:
                yield delta
        finally:
            response.cancel()

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self.handle.stats.remote()
        return stats
