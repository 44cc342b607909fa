"""Budgets and rate limits are exact across OS processes: 4 clients x 250 requests against one
ledger never overshoot, and the same load with check-then-charge does (the negative control).
One ledger shared by threads, as a gateway replica shares it, is exact too."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from frugalserve.ledger import BudgetExceeded, Period, TenantLimits

from . import procs
from .conftest import Backend, totals_of

pytestmark = pytest.mark.ledger

CLIENTS, REQUESTS, COST_MAX = 4, 250, 1_000
BUDGET = 10 * COST_MAX + 500


def test_no_overshoot_across_processes(backend: Backend) -> None:
    ledger = backend.ledger
    ledger.configure_tenant("acme", TenantLimits(limit_micros=BUDGET, period=Period.NEVER))
    reports = procs.run(
        backend,
        CLIENTS,
        "--mode",
        "reserve",
        "--tenant",
        "acme",
        "--n",
        str(REQUESTS),
        "--cost-max",
        str(COST_MAX),
    )
    admitted = sum(int(r["admitted"]) for r in reports)  # type: ignore[call-overload]
    u = ledger.usage("acme")
    records = ledger.settlements("acme")
    assert u.spent_micros <= BUDGET, f"overshoot by {u.spent_micros - BUDGET} micro-USD"
    assert admitted >= BUDGET // COST_MAX
    assert (u.reserved_micros, u.in_flight) == (0, 0)
    assert len(records) == admitted
    assert u.spent_micros == sum(s.cost_micros for s in records)
    assert ledger.totals() == totals_of(records)


def test_negative_control_check_then_charge_overshoots(backend: Backend) -> None:
    """Without reservations the same load goes over budget: the test above can see overshoot.
    Overshoot is a race, so up to three fresh rounds are run; one is nearly always enough."""
    spent = []
    for round_ in range(3):
        tenant = f"naive{round_}"
        backend.ledger.configure_tenant(tenant, TenantLimits(period=Period.NEVER))  # no limit
        procs.run(
            backend,
            CLIENTS,
            "--mode",
            "naive",
            "--tenant",
            tenant,
            "--n",
            str(REQUESTS),
            "--cost-max",
            str(COST_MAX),
            "--budget",
            str(BUDGET),
        )
        spent.append(backend.ledger.usage(tenant).spent_micros)
        if spent[-1] > BUDGET:
            return
    pytest.fail(f"check-then-charge never overshot {BUDGET}: spent {spent}")


def test_rate_limit_is_exact_across_processes(backend: Backend) -> None:
    rpm = 60
    backend.ledger.configure_tenant(
        "acme", TenantLimits(requests_per_minute=rpm, period=Period.NEVER)
    )
    reports = procs.run(backend, CLIENTS, "--mode", "rate", "--tenant", "acme", "--n", "40")
    times = [t for r in reports for t in r["admitted_at"]]  # type: ignore[attr-defined]
    per_minute = Counter(int(t // 60) for t in times)
    assert max(per_minute.values()) <= rpm
    assert len(times) >= min(rpm, CLIENTS * 40)
    assert len(times) + sum(int(r["limited"]) for r in reports) == CLIENTS * 40  # type: ignore[call-overload]


def test_no_overshoot_across_threads_sharing_one_ledger(backend: Backend) -> None:
    ledger = backend.ledger
    ledger.configure_tenant("acme", TenantLimits(limit_micros=BUDGET, period=Period.NEVER))

    def client(n: int) -> int:
        admitted = 0
        for i in range(50):
            try:
                ledger.reserve("acme", f"t{n}-{i}", COST_MAX, 100)
            except BudgetExceeded:
                continue
            ledger.settle(f"t{n}-{i}", COST_MAX - i, 10, 20)
            admitted += 1
        return admitted

    with ThreadPoolExecutor(8) as pool:
        admitted = sum(pool.map(client, range(8)))
    u = ledger.usage("acme")
    records = ledger.settlements("acme")
    assert u.spent_micros <= BUDGET
    assert admitted >= BUDGET // COST_MAX
    assert (u.reserved_micros, u.in_flight, len(records)) == (0, 0, admitted)
    assert u.spent_micros == sum(s.cost_micros for s in records)
