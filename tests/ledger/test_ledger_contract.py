"""The ledger protocol's behaviour, one scenario per test, on both backends."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from frugalserve.ledger import (
    BudgetExceeded,
    Ledger,
    Period,
    RateLimited,
    TenantLimits,
    Totals,
    UnknownReservation,
    open_ledger,
)
from frugalserve.ledger.redis_backend import RedisLedger
from frugalserve.ledger.sqlite import SQLiteLedger

from .conftest import Backend, start_redis

pytestmark = pytest.mark.ledger


def test_reserve_admits_up_to_the_budget_and_refuses_with_details(ledger: Ledger) -> None:
    ledger.configure_tenant("acme", TenantLimits(limit_micros=10_000, period=Period.DAILY))
    r = ledger.reserve("acme", "a", 6_000, 10)
    assert (r.tenant, r.request_id, r.cost_max, r.tokens_max) == ("acme", "a", 6_000, 10)
    ledger.reserve("acme", "b", 4_000, 10)
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve("acme", "c", 1, 1)
    u = ledger.usage("acme")
    assert refused.value.reason == "budget_usd"
    assert refused.value.remaining_micros == 0
    assert refused.value.resets_at == u.period_end == u.period_start + timedelta(days=1)
    assert (u.reserved_micros, u.in_flight, u.remaining_micros) == (10_000, 2, 0)


def test_token_budget_refuses_with_its_own_reason(ledger: Ledger) -> None:
    ledger.configure_tenant("acme", TenantLimits(limit_tokens=100))
    ledger.reserve("acme", "a", 5, 60)
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve("acme", "b", 5, 41)
    assert (refused.value.reason, refused.value.remaining_tokens) == ("budget_tokens", 40)
    assert refused.value.remaining_micros is None


def test_settle_charges_actual_cost_and_is_idempotent(ledger: Ledger) -> None:
    ledger.configure_tenant("acme", TenantLimits(limit_micros=10_000))
    ledger.reserve("acme", "a", 5_000, 100, model="tiny", price_version="p7")
    first = ledger.settle("a", 1_234, 30, 40)
    assert (first.cost_micros, first.prompt_tokens, first.completion_tokens) == (1_234, 30, 40)
    assert (first.model, first.price_version, first.clamped, first.expired) == (
        "tiny",
        "p7",
        False,
        False,
    )
    assert ledger.settle("a", 9, 9, 9) == first
    u = ledger.usage("acme")
    assert (u.spent_micros, u.reserved_micros, u.tokens_prompt, u.tokens_completion) == (
        1_234,
        0,
        30,
        40,
    )
    assert ledger.settlements("acme") == [first]


def test_settle_never_charges_above_the_reservation(ledger: Ledger) -> None:
    ledger.configure_tenant("acme", TenantLimits(limit_micros=10_000))
    ledger.reserve("acme", "a", 5_000, 100)
    s = ledger.settle("a", 7_000, 30, 90)
    assert (s.cost_micros, s.prompt_tokens, s.completion_tokens, s.clamped) == (5_000, 30, 70, True)
    assert ledger.usage("acme").spent_micros == 5_000


def test_release_returns_the_hold_and_cannot_be_settled(ledger: Ledger) -> None:
    ledger.configure_tenant("acme", TenantLimits(limit_micros=10_000, limit_tokens=500))
    ledger.reserve("acme", "a", 10_000, 500)
    ledger.release("a")
    ledger.release("a")
    u = ledger.usage("acme")
    assert (u.reserved_micros, u.reserved_tokens, u.in_flight, u.spent_micros) == (0, 0, 0, 0)
    with pytest.raises(UnknownReservation, match="released"):
        ledger.settle("a", 1, 1, 1)
    with pytest.raises(UnknownReservation, match="never reserved"):
        ledger.release("nope")
    ledger.reserve("acme", "b", 10_000, 500)


def test_expired_leases_are_charged_in_full_and_only_those(backend: Backend) -> None:
    ledger = backend.ledger
    for t in ("acme", "other"):
        ledger.configure_tenant(t, TenantLimits(limit_micros=10_000))
    ledger.reserve("acme", "short", 3_000, 50, lease_s=10)
    ledger.reserve("acme", "long", 2_000, 50, lease_s=1000)
    ledger.reserve("other", "o", 1_000, 50, lease_s=1000)
    assert ledger.expire() == 0
    backend.advance(11)
    assert ledger.expire() == 1
    assert ledger.expire() == 0
    (record,) = ledger.settlements("acme")
    assert (record.request_id, record.cost_micros, record.expired) == ("short", 3_000, True)
    assert ledger.settle("short", 1, 1, 1) == record
    acme, other = ledger.usage("acme"), ledger.usage("other")
    assert (acme.spent_micros, acme.reserved_micros, acme.in_flight) == (3_000, 2_000, 1)
    assert (other.spent_micros, other.reserved_micros) == (0, 1_000)


def test_settling_after_the_lease_charges_in_full(backend: Backend) -> None:
    backend.ledger.configure_tenant("acme", TenantLimits(limit_micros=10_000))
    backend.ledger.reserve("acme", "a", 3_000, 50, lease_s=5)
    backend.ledger.reserve("acme", "b", 3_000, 50, lease_s=5)
    backend.advance(6)
    assert backend.ledger.settle("a", 10, 1, 1).cost_micros == 3_000
    backend.ledger.release("b")
    assert backend.ledger.usage("acme").spent_micros == 6_000


def test_reconfiguring_never_loses_spent_usage(ledger: Ledger) -> None:
    ledger.configure_tenant("acme", TenantLimits(limit_micros=10_000))
    ledger.reserve("acme", "a", 6_000, 10)
    ledger.settle("a", 6_000, 5, 5)
    ledger.configure_tenant("acme", TenantLimits(limit_micros=5_000, period=Period.WEEKLY))
    u = ledger.usage("acme")
    assert (u.spent_micros, u.limit_micros, u.remaining_micros) == (6_000, 5_000, 0)
    assert u.period_end == u.period_start + timedelta(weeks=1)
    assert u.period_start.weekday() == 0
    with pytest.raises(BudgetExceeded):
        ledger.reserve("acme", "b", 0, 0)  # over budget already: nothing is admitted
    ledger.configure_tenant("acme", TenantLimits(limit_micros=20_000, period=Period.WEEKLY))
    assert ledger.usage("acme").remaining_micros == 14_000


def test_period_rolls_over_by_the_ledgers_clock(backend: Backend) -> None:
    ledger = backend.ledger
    ledger.configure_tenant("acme", TenantLimits(limit_micros=10_000, period=Period.DAILY))
    ledger.reserve("acme", "a", 4_000, 10)
    ledger.settle("a", 4_000, 5, 5)
    ledger.reserve("acme", "inflight", 6_000, 10, lease_s=2 * 86_400)
    before = ledger.usage("acme")
    backend.advance(86_400)
    after = ledger.usage("acme")
    assert after.period_start == before.period_end
    assert (after.spent_micros, after.reserved_micros, after.tokens_prompt) == (0, 6_000, 0)
    ledger.settle("inflight", 5_000, 5, 5)
    assert ledger.usage("acme").spent_micros == 5_000
    assert [s.request_id for s in ledger.settlements("acme", since=after.period_start)] == [
        "inflight"
    ]


def test_never_period_has_no_end(ledger: Ledger) -> None:
    ledger.configure_tenant("acme", TenantLimits(limit_micros=1, period=Period.NEVER))
    assert ledger.usage("acme").period_end is None


def test_unlimited_tenant_has_no_remaining(ledger: Ledger) -> None:
    ledger.configure_tenant("acme", TenantLimits())
    ledger.reserve("acme", "a", 10**12, 10**9)
    u = ledger.usage("acme")
    assert (u.remaining_micros, u.remaining_tokens, u.reserved_micros) == (None, None, 10**12)
    assert ledger.tenants() == ["acme"]


def test_requests_per_minute_is_a_fixed_utc_minute_window(backend: Backend) -> None:
    ledger = backend.ledger
    ledger.configure_tenant("acme", TenantLimits(requests_per_minute=3))
    for i in range(3):
        ledger.reserve("acme", f"r{i}", 1, 1)
    with pytest.raises(RateLimited) as limited:
        ledger.reserve("acme", "r3", 1, 1)
    assert limited.value.reason == "requests_per_minute"
    assert 0 < limited.value.retry_after_s <= 60
    assert ledger.usage("acme").in_flight == 3  # the refusal wrote nothing
    backend.advance(limited.value.retry_after_s)
    ledger.reserve("acme", "r3", 1, 1)


def test_tokens_per_minute_counts_reserved_tokens(backend: Backend) -> None:
    ledger = backend.ledger
    ledger.configure_tenant("acme", TenantLimits(tokens_per_minute=100))
    ledger.reserve("acme", "a", 1, 70)
    ledger.release("a")  # tokens stay counted in the window: they were admitted
    with pytest.raises(RateLimited) as limited:
        ledger.reserve("acme", "b", 1, 31)
    assert limited.value.reason == "tokens_per_minute"
    ledger.reserve("acme", "b", 1, 30)


def test_open_ledger_urls(tmp_path: pytest.TempPathFactory, redis_server: object) -> None:
    path = tmp_path / "x.db"  # type: ignore[operator]
    sqlite = open_ledger(f"sqlite:///{path}")
    assert isinstance(sqlite, SQLiteLedger)
    sqlite.configure_tenant("acme", TenantLimits())
    sqlite.close()
    assert path.exists()
    r = open_ledger(redis_server.url)  # type: ignore[attr-defined]
    assert isinstance(r, RedisLedger)
    r.close()
    for bad in ("postgres://x", "sqlite:///", "nonsense"):
        with pytest.raises(ValueError, match="url"):
            open_ledger(bad)


def test_redis_ledger_outlives_a_function_flush_and_dropped_connections(tmp_path: Path) -> None:
    """The server may lose the ledger's functions (FUNCTION FLUSH, a new server) or a
    connection: the ledger loads its library again, retries as its client's `retry` says, and
    reconnects."""
    server = start_redis(tmp_path)
    admin = redis.Redis.from_url(server.url)
    retrying = RedisLedger(redis.Redis.from_url(server.url, retry=Retry(NoBackoff(), 1)))
    once = RedisLedger.from_url(server.url)  # redis-py's from_url default: no retries
    try:
        retrying.configure_tenant("acme", TenantLimits(limit_micros=1_000))
        admin.function_flush()
        retrying.reserve("acme", "a", 100, 10)
        once.reserve("acme", "b", 100, 10)
        assert admin.client_kill_filter(_type="normal", skipme=True) == 2
        assert retrying.settle("a", 40, 1, 2).cost_micros == 40
        with pytest.raises(redis.ConnectionError):
            once.settle("b", 30, 1, 2)
        assert once.settle("b", 30, 1, 2).cost_micros == 30  # on a new connection
        assert once.usage("acme").spent_micros == 70
    finally:
        for client in (retrying, once, admin):
            client.close()
        server.stop()


def test_sqlite_settlements_are_append_only(tmp_path: pytest.TempPathFactory) -> None:
    import sqlite3

    path = str(tmp_path / "x.db")  # type: ignore[operator]
    ledger = SQLiteLedger(path)
    ledger.configure_tenant("acme", TenantLimits())
    ledger.reserve("acme", "a", 1, 1)
    ledger.settle("a", 1, 1, 0)
    ledger.close()
    with sqlite3.connect(path) as db, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE settlements SET cost_micros = 0")
    db.close()


def test_totals_sum_every_settlement_per_tenant_and_model(backend: Backend) -> None:
    ledger = backend.ledger
    for tenant in ("acme", "zeta"):
        ledger.configure_tenant(tenant, TenantLimits(limit_micros=100_000, period=Period.HOURLY))
    ledger.reserve("acme", "a", 1_000, 100, model="big", lease_s=1)
    ledger.reserve("acme", "b", 1_000, 100, model="big")
    ledger.reserve("acme", "c", 1_000, 100, model="small")
    ledger.reserve("zeta", "d", 1_000, 100, model="big")
    ledger.settle("b", 700, 10, 20)
    ledger.settle("b", 1, 1, 1)  # a repeat counts once
    ledger.settle("c", 300, 5, 6)
    ledger.release("d")  # nothing produced: no totals row
    backend.advance(3_600 * 2)  # a's lease runs out in a later period: totals keep everything
    assert ledger.expire() == 1
    assert ledger.totals() == [
        Totals("acme", "big", 10, 20 + 100, 700 + 1_000),
        Totals("acme", "small", 5, 6, 300),
    ]
    assert ledger.usage("acme").spent_micros == 1_000  # only this period's expiry


def test_sqlite_totals_are_backfilled_for_an_older_ledger_file(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    ledger = SQLiteLedger(path)
    ledger.configure_tenant("acme", TenantLimits())
    ledger.reserve("acme", "a", 100, 10, model="m")
    ledger.settle("a", 40, 3, 4)
    ledger.close()
    with sqlite3.connect(path) as db:  # the schema before totals existed
        db.execute("DROP TRIGGER settlements_totals")
        db.execute("DROP TABLE totals")
    reopened = SQLiteLedger(path)
    assert reopened.totals() == [Totals("acme", "m", 3, 4, 40)]
    reopened.close()
