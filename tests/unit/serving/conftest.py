"""Fixtures of the fast gateway tests: the real gateway and HTTP app over fake engines and a
real SQLite ledger in a temporary directory, reached through ASGI (no Ray, no sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from frugalserve.api.models import OnExceeded, Period, Quantization
from frugalserve.ledger import Ledger, open_ledger
from frugalserve.serving.clients import EngineClient
from frugalserve.serving.config import (
    AutoscalingConfig,
    GatewayUserConfig,
    ModelConfig,
    PriceConfig,
    TenantConfig,
    hash_key,
)
from frugalserve.serving.gateway import Gateway
from frugalserve.serving.http import create_app
from tests.serving.fake_engine import FakeEngine

KEYS = {"alice": "sk-alice", "bob": "sk-bob", "carol": "sk-carol"}
# micro-USD per token (= USD per 1M tokens)
PRICES = {"big": PriceConfig(gpu_hour_usd=0, gpus_per_replica=0, input_per_million_usd=1.0,
                             output_per_million_usd=10.0),
          "small": PriceConfig(gpu_hour_usd=0, gpus_per_replica=0, input_per_million_usd=0.1,
                               output_per_million_usd=1.0)}


def model(name: str, fallback: str | None = None) -> ModelConfig:
    return ModelConfig(name=name, source="builtin://fake", dtype="float32",
                       quantization=Quantization.NONE, max_batch_size=8, fallback=fallback,
                       num_gpus=0, autoscaling=AutoscalingConfig(
                           min_replicas=1, max_replicas=1, target_ongoing_requests=8,
                           upscale_delay_s=0, downscale_delay_s=0))


def tenant(name: str, **kw: object) -> TenantConfig:
    return TenantConfig(name=name, key_sha256=hash_key(KEYS[name]), period=Period.DAILY, **kw)


def user_config(**alice: object) -> GatewayUserConfig:
    return GatewayUserConfig(
        tenants=(
            tenant("alice", **{"limit_micros": 100_000, **alice}),
            tenant("bob", models=("small",), limit_micros=2_000,
                   on_exceeded=OnExceeded.DOWNGRADE),
            tenant("carol", requests_per_minute=1),
        ),
        prices=PRICES,
    )


@dataclass
class Stack:
    gateway: Gateway
    engines: dict[str, FakeEngine]
    ledger: Ledger
    http: httpx.AsyncClient

    def openai(self, who: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url="http://test/v1", api_key=KEYS[who],
                                  http_client=self.http, max_retries=0)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield led
    led.close()


@pytest.fixture
async def stack(ledger: Ledger) -> AsyncIterator[Stack]:
    engines = {"big": FakeEngine("big", max_context_tokens=200),
               "small": FakeEngine("small", max_context_tokens=400)}
    gateway = Gateway({"big": model("big", fallback="small"), "small": model("small")},
                      {n: EngineClient(e) for n, e in engines.items()}, ledger)
    gateway.configure(user_config())
    app = create_app(gateway, max_body_bytes=4096)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as http:
        yield Stack(gateway, engines, ledger, http)
