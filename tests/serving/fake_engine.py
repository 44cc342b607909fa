"""A small fake of `engine.Engine` for gateway tests: one token per prompt byte, one completion
token ("x") per step, with exact cumulative counts and a record of what each request produced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from frugalserve.serving.engine import SamplingParams, TokenDelta


class FakeEngine:
    """Implements the part of `Engine` the serving layer uses; `fail_after` raises mid-stream."""

    def __init__(self, name: str = "fake", max_context_tokens: int = 256,
                 step_s: float = 0.0, fail_after: int | None = None) -> None:
        self.model_name = name
        self.max_context_tokens = max_context_tokens
        self.step_s = step_s
        self.fail_after = fail_after
        self.produced: dict[str, tuple[int, int]] = {}
        """request id -> (prompt tokens, completion tokens) of the last delta produced."""
        self.running = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int]) -> str:
        return "x" * len(ids)

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[TokenDelta]:
        rid = request_id or "anonymous"
        self.running += 1
        try:
            for n in range(1, params.max_tokens + 1):
                await asyncio.sleep(self.step_s)
                if self.fail_after is not None and n > self.fail_after:
                    raise RuntimeError("engine exploded")
                self.produced[rid] = (len(prompt_ids), n)
                finish = "length" if n == params.max_tokens else None
                yield TokenDelta("x", [120], finish, len(prompt_ids), n)
        finally:
            self.running -= 1

    def stats(self) -> dict[str, Any]:
        return {"running": self.running}
