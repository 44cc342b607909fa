"""Fixtures of the ledger tests: a private redis-server for the session and a fresh ledger of
each backend per test, both on a clock the test can move forward."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from frugalserve.ledger import Ledger, Settlement, Totals
from frugalserve.ledger.localredis import LocalRedis, RedisServerMissing
from frugalserve.ledger.redis_backend import RedisLedger
from frugalserve.ledger.sqlite import SQLiteLedger

WORKER = Path(__file__).with_name("worker.py")
MID_DAY = 12 * 3600
_prefixes = itertools.count()


def start_redis(workdir: Path) -> LocalRedis:
    server = LocalRedis(workdir)
    try:
        server.start()
    except RedisServerMissing as e:
        pytest.fail(str(e))
    return server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def noon_offset() -> float:
    """Seconds to add to the real clock to reach noon UTC of tomorrow: far from any boundary."""
    now = time.time()
    return (now - now % 86400) + 86400 + MID_DAY - now


@dataclass
class Backend:
    """A ledger plus what a worker process needs to open the same one."""

    kind: str
    ledger: Ledger
    target: str
    prefix: str = ""
    offset_s: float = 0.0

    def advance(self, seconds: float) -> None:
        """Move the ledger's clock forward (real time keeps running too)."""
        self.offset_s += seconds
        if isinstance(self.ledger, RedisLedger):
            self.ledger.time_offset_s = self.offset_s

    def worker_args(self) -> list[str]:
        return [
            sys.executable,
            str(WORKER),
            "--backend",
            self.kind,
            "--target",
            self.target,
            "--prefix",
            self.prefix,
            "--offset",
            str(self.offset_s),
        ]


def make_backend(kind: str, tmp_path: Path, server: LocalRedis | None) -> Backend:
    if kind == "sqlite":
        path = str(tmp_path / f"ledger-{next(_prefixes)}.db")
        backend = Backend("sqlite", None, path, offset_s=noon_offset())  # type: ignore[arg-type]
        backend.ledger = SQLiteLedger(path, clock=lambda: time.time() + backend.offset_s)
        return backend
    assert server is not None
    prefix = f"t{next(_prefixes)}:"
    offset = noon_offset()
    ledger = RedisLedger.from_url(server.url, prefix=prefix, time_offset_s=offset)
    return Backend("redis", ledger, server.url, prefix, offset)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    b = make_backend(request.param, tmp_path, server)
    yield b
    b.ledger.close()


@pytest.fixture
def ledger(backend: Backend) -> Ledger:
    return backend.ledger


def totals_of(records: list[Settlement]) -> list[Totals]:
    """What `Ledger.totals()` must return: the records summed per (tenant, model), sorted."""
    sums: dict[tuple[str, str], tuple[int, int, int]] = {}
    for s in records:
        p, c, m = sums.get((s.tenant, s.model), (0, 0, 0))
        sums[(s.tenant, s.model)] = (p + s.prompt_tokens, c + s.completion_tokens,
                                     m + s.cost_micros)
    return [Totals(t, model, *v) for (t, model), v in sorted(sums.items())]
