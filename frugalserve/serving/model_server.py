"""The model deployment: one engine per replica, shared by every request the replica holds so
they decode in one continuous batch. The replica is ready only once the weights are loaded."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from frugalserve.serving.clients import Completion, EngineClient, Prepared
from frugalserve.serving.config import ModelConfig
from frugalserve.serving.engine import Engine, SamplingParams, TokenDelta

log = logging.getLogger("ray.serve")


@serve.deployment
class ModelServer:
    """Serve deployment class (see `app.build_app`); the gateway calls it through a handle."""

    def __init__(self, model: dict[str, Any]) -> None:
        self.config = ModelConfig.model_validate(model)
        cfg, start = self.config, time.monotonic()

        def progress(message: str) -> None:
            log.info("model %s: %s (%.1fs)", cfg.name, message, time.monotonic() - start)

        progress("loading weights")
        self.engine = Engine.from_source(
            cfg.source, dtype=cfg.dtype, quantization=cfg.quantization.value,
            max_batch_size=cfg.max_batch_size, max_context_tokens=cfg.max_context_tokens,
            revision=cfg.revision, device="cuda" if cfg.num_gpus else "cpu", progress=progress)
        self.client = EngineClient(self.engine)
        progress(f"ready: {self.engine.architecture}, context {self.engine.max_context_tokens}")

    async def prepare(self, messages: list[dict[str, str]] | None,
                      prompt: str | None) -> Prepared:
        return await self.client.prepare(messages, prompt)

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str) -> AsyncIterator[TokenDelta]:
        async for delta in self.engine.generate(prompt_ids, params, request_id):
            yield delta

    async def complete(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str) -> Completion:
        """The whole generation in one reply (non-streaming requests)."""
        return await self.client.complete(prompt_ids, params, request_id)

    async def stats(self) -> dict[str, Any]:
        return self.engine.stats()
