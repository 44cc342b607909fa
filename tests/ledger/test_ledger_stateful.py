"""Stateful property test of the protocol on both backends: after any sequence of operations
`spent + reserved <= limit`, `spent` equals the period's settlement records, and every
admission or refusal was the right one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from frugalserve.ledger import BudgetExceeded, Period, Settlement, TenantLimits, Usage
from frugalserve.ledger.localredis import LocalRedis

from .conftest import Backend, make_backend, totals_of

pytestmark = pytest.mark.ledger

TENANTS = {
    "acme": TenantLimits(limit_micros=10_000, limit_tokens=2_000, period=Period.DAILY),
    "globex": TenantLimits(limit_micros=5_000, period=Period.HOURLY),
}
SHORT_LEASE = 30.0


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, factory: Callable[[], Backend]) -> None:
        super().__init__()
        self.backend = factory()
        self.ledger = self.backend.ledger
        self.limits = dict(TENANTS)
        for tenant, limits in self.limits.items():
            self.ledger.configure_tenant(tenant, limits)
        self.now = 0.0  # model time: seconds the test has moved the clock
        self.open: dict[str, tuple[str, int, int, float]] = {}  # id -> tenant, cost, tokens, exp
        self.settled: dict[str, Settlement] = {}
        self.next_id = 0

    def teardown(self) -> None:
        self.ledger.close()

    def usage(self, tenant: str) -> Usage:
        return self.ledger.usage(tenant)

    @rule(
        tenant=st.sampled_from(sorted(TENANTS)),
        cost=st.integers(0, 4_000),
        tokens=st.integers(0, 800),
        lease=st.sampled_from([SHORT_LEASE, 3 * 86_400.0]),
    )
    def reserve(self, tenant: str, cost: int, tokens: int, lease: float) -> None:
        before = self.usage(tenant)
        fits_micros = (
            before.limit_micros is None
            or before.spent_micros + before.reserved_micros + cost <= before.limit_micros
        )
        used_tokens = before.tokens_prompt + before.tokens_completion + before.reserved_tokens
        fits_tokens = before.limit_tokens is None or used_tokens + tokens <= before.limit_tokens
        rid = f"r{self.next_id}"
        self.next_id += 1
        try:
            self.ledger.reserve(tenant, rid, cost, tokens, lease_s=lease)
        except BudgetExceeded as refused:
            assert not (fits_micros and fits_tokens), "refused a request that fits"
            assert refused.reason == ("budget_tokens" if fits_micros else "budget_usd")
            return
        assert fits_micros and fits_tokens, "admitted a request over budget"
        self.open[rid] = (tenant, cost, tokens, self.now + lease)

    @precondition(lambda self: self.open)
    @rule(
        data=st.data(),
        cost=st.integers(0, 5_000),
        prompt=st.integers(0, 500),
        completion=st.integers(0, 500),
    )
    def settle(self, data: st.DataObject, cost: int, prompt: int, completion: int) -> None:
        rid = data.draw(st.sampled_from(sorted(self.open)))
        tenant, cost_max, tokens_max, expires = self.open.pop(rid)
        s = self.ledger.settle(rid, cost, prompt, completion)
        assert s.expired == (self.now >= expires)
        if s.expired:
            assert (s.cost_micros, s.completion_tokens) == (cost_max, tokens_max)
        else:
            assert s.cost_micros == min(cost, cost_max)
            assert s.clamped == (cost > cost_max or prompt + completion > tokens_max)
        assert s.prompt_tokens + s.completion_tokens <= tokens_max
        self.settled[rid] = s

    @precondition(lambda self: self.settled)
    @rule(data=st.data())
    def settle_again(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.settled)))
        assert self.ledger.settle(rid, 1, 1, 1) == self.settled[rid]

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.open)))
        expires = self.open.pop(rid)[3]
        self.ledger.release(rid)
        if self.now >= expires:  # too late to release: charged in full
            (record,) = [s for s in self.ledger.settlements() if s.request_id == rid]
            assert record.expired
            self.settled[rid] = record

    @rule(seconds=st.sampled_from([SHORT_LEASE + 1, 3_600.0, 7 * 3_600.0, 13 * 3_600.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.backend.advance(seconds)

    @rule()
    def expire(self) -> None:
        due = [rid for rid, (*_, expires) in self.open.items() if self.now >= expires]
        assert self.ledger.expire() == len(due)
        for rid in due:
            del self.open[rid]
        records = {s.request_id: s for s in self.ledger.settlements()}
        self.settled.update({rid: records[rid] for rid in due})

    @rule(tenant=st.sampled_from(sorted(TENANTS)), extra=st.integers(0, 3_000))
    def raise_limit(self, tenant: str, extra: int) -> None:
        old = self.limits[tenant]
        assert old.limit_micros is not None
        new = TenantLimits(old.limit_micros + extra, old.limit_tokens, old.period)
        self.limits[tenant] = new
        self.ledger.configure_tenant(tenant, new)

    @invariant()
    def books_balance(self) -> None:
        for tenant in TENANTS:
            u = self.usage(tenant)
            assert u.limit_micros is not None
            assert u.spent_micros + u.reserved_micros <= u.limit_micros
            if u.limit_tokens is not None:
                used = u.tokens_prompt + u.tokens_completion + u.reserved_tokens
                assert used <= u.limit_tokens
            holds = [v for v in self.open.values() if v[0] == tenant]
            assert u.reserved_micros == sum(v[1] for v in holds)
            assert u.reserved_tokens == sum(v[2] for v in holds)
            assert u.in_flight == len(holds)
            records = self.ledger.settlements(tenant, since=u.period_start)
            assert u.spent_micros == sum(s.cost_micros for s in records)
            assert u.tokens_prompt == sum(s.prompt_tokens for s in records)
            assert u.tokens_completion == sum(s.completion_tokens for s in records)
        assert len(self.ledger.settlements()) == len(self.settled)
        assert self.ledger.totals() == totals_of(self.ledger.settlements())


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_ledger_state_machine(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    server: LocalRedis | None = request.getfixturevalue("redis_server") if kind == "redis" else None
    run_state_machine_as_test(
        lambda: LedgerMachine(lambda: make_backend(kind, tmp_path, server)),
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
