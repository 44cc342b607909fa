"""Crash safety: a client killed with reservations leaves holds that expire and are charged in
full; a redis-server killed under load (AOF, appendfsync always) keeps every acknowledged
settlement."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from frugalserve.ledger import Period, TenantLimits
from frugalserve.ledger.redis_backend import RedisLedger

from . import procs
from .conftest import Backend, make_backend, start_redis

pytestmark = pytest.mark.ledger


def test_killed_clients_reservations_expire_charged_in_full(backend: Backend) -> None:
    ledger = backend.ledger
    for tenant in ("acme", "other"):
        ledger.configure_tenant(tenant, TenantLimits(limit_micros=10_000, period=Period.NEVER))
    ledger.reserve("other", "o1", 1_000, 10)
    with procs.started(
        backend,
        1,
        "--mode",
        "hold",
        "--tenant",
        "acme",
        "--n",
        "3",
        "--cost-max",
        "2000",
        "--lease",
        "5",
    ) as (holder,):
        procs.go([holder])
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=10) == -signal.SIGKILL
    u = ledger.usage("acme")
    assert (u.reserved_micros, u.in_flight, u.spent_micros) == (6_000, 3, 0)
    assert ledger.expire() == 0
    ledger.settle("o1", 700, 5, 5)  # other tenants carry on meanwhile
    backend.advance(6)
    assert ledger.expire() == 3
    u = ledger.usage("acme")
    assert (u.spent_micros, u.reserved_micros, u.in_flight) == (6_000, 0, 0)
    records = ledger.settlements("acme")
    assert len(records) == 3 and all(s.expired and s.cost_micros == 2_000 for s in records)
    other = ledger.usage("other")
    assert (other.spent_micros, other.reserved_micros) == (700, 0)


def test_acknowledged_settlements_survive_redis_kill9(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")
    try:
        backend = make_backend("redis", tmp_path, server)
        backend.ledger.configure_tenant("acme", TenantLimits(period=Period.NEVER))
        with procs.started(
            backend, 2, "--mode", "durable", "--tenant", "acme", "--n", "1000000"
        ) as workers:
            procs.go(workers)
            time.sleep(1.5)
            server.kill9()
            outputs = [w.communicate(timeout=60)[0] for w in workers]
        assert all(w.returncode == 0 for w in workers)
        acked = {line for out in outputs for line in out.split()}
        assert len(acked) > 50, "the load did not get going before the kill"
        backend.ledger.close()
        server.start()
        ledger = RedisLedger.from_url(server.url, prefix=backend.prefix)
        records = ledger.settlements("acme")
        assert acked <= {s.request_id for s in records}
        assert ledger.usage("acme").spent_micros == sum(s.cost_micros for s in records)
        ledger.close()
    finally:
        server.stop()
