"""Bad input is refused with an error naming the parameter, and leaves no trace."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from frugalserve.ledger import (
    BudgetExceeded,
    DuplicateRequest,
    InvalidLedgerInput,
    Ledger,
    LedgerError,
    TenantLimits,
    UnknownReservation,
    UnknownTenant,
)

pytestmark = pytest.mark.ledger

Call = Callable[[Ledger], object]

BAD_CALLS: list[tuple[str, Call]] = [
    ("tenant", lambda lg: lg.configure_tenant("café", TenantLimits())),
    ("tenant", lambda lg: lg.configure_tenant("租户", TenantLimits())),
    ("tenant", lambda lg: lg.configure_tenant("x" * 254, TenantLimits())),
    ("tenant", lambda lg: lg.configure_tenant("", TenantLimits())),
    ("tenant", lambda lg: lg.configure_tenant("a b", TenantLimits())),
    ("tenant", lambda lg: lg.configure_tenant("a\nb", TenantLimits())),
    ("tenant", lambda lg: lg.configure_tenant(7, TenantLimits())),  # type: ignore[arg-type]
    ("limits", lambda lg: lg.configure_tenant("new", {"limit_micros": 1})),  # type: ignore[arg-type]
    ("limits.limit_micros", lambda lg: lg.configure_tenant("new", TenantLimits(limit_micros=-1))),
    (
        "limits.limit_micros",
        lambda lg: lg.configure_tenant("new", TenantLimits(limit_micros=10**30)),
    ),
    ("limits.limit_micros", lambda lg: lg.configure_tenant("new", TenantLimits(limit_micros=1.5))),  # type: ignore[arg-type]
    ("limits.limit_tokens", lambda lg: lg.configure_tenant("new", TenantLimits(limit_tokens=True))),
    ("limits.period", lambda lg: lg.configure_tenant("new", TenantLimits(period="daily"))),  # type: ignore[arg-type]
    (
        "limits.requests_per_minute",
        lambda lg: lg.configure_tenant("new", TenantLimits(requests_per_minute=-5)),
    ),
    ("cost_max", lambda lg: lg.reserve("acme", "r", -1, 1)),
    ("cost_max", lambda lg: lg.reserve("acme", "r", 10**13, 1)),
    ("cost_max", lambda lg: lg.reserve("acme", "r", 0.5, 1)),  # type: ignore[arg-type]
    ("tokens_max", lambda lg: lg.reserve("acme", "r", 1, -1)),
    ("tokens_max", lambda lg: lg.reserve("acme", "r", 1, 10**10)),
    ("lease_s", lambda lg: lg.reserve("acme", "r", 1, 1, lease_s=0)),
    ("lease_s", lambda lg: lg.reserve("acme", "r", 1, 1, lease_s=float("nan"))),
    ("lease_s", lambda lg: lg.reserve("acme", "r", 1, 1, lease_s=1e9)),
    ("request_id", lambda lg: lg.reserve("acme", "ré", 1, 1)),
    ("request_id", lambda lg: lg.reserve("acme", "r" * 300, 1, 1)),
    ("model", lambda lg: lg.reserve("acme", "r", 1, 1, model="has space")),
    ("price_version", lambda lg: lg.reserve("acme", "r", 1, 1, price_version="v" * 201)),
    ("tenant", lambda lg: lg.reserve("ünknown", "r", 1, 1)),
    ("cost_micros", lambda lg: lg.settle("open", -1, 0, 0)),
    ("prompt_tokens", lambda lg: lg.settle("open", 1, -1, 0)),
    ("completion_tokens", lambda lg: lg.settle("open", 1, 0, 10**12)),
    ("request_id", lambda lg: lg.settle("", 1, 0, 0)),
    ("request_id", lambda lg: lg.release("\x00")),
    ("tenant", lambda lg: lg.usage("x" * 1000)),
    ("tenant", lambda lg: lg.settlements("naïve")),
]


def snapshot(ledger: Ledger) -> object:
    return (
        ledger.tenants(),
        [ledger.usage(t) for t in ledger.tenants()],
        ledger.settlements(),
    )


@pytest.fixture
def seeded(ledger: Ledger) -> Ledger:
    """A tenant with one settled and one open reservation."""
    ledger.configure_tenant("acme", TenantLimits(limit_micros=10_000, limit_tokens=1_000))
    ledger.reserve("acme", "done", 1_000, 100)
    ledger.settle("done", 500, 10, 20)
    ledger.reserve("acme", "open", 2_000, 100)
    return ledger


@pytest.mark.parametrize(("parameter", "call"), BAD_CALLS)
def test_bad_input_is_refused_naming_the_parameter(
    seeded: Ledger, parameter: str, call: Call
) -> None:
    before = snapshot(seeded)
    with pytest.raises(InvalidLedgerInput) as refused:
        call(seeded)
    assert refused.value.parameter == parameter
    assert str(refused.value).startswith(parameter)
    assert isinstance(refused.value, ValueError)
    assert snapshot(seeded) == before


@pytest.mark.parametrize(
    ("error", "call"),
    [
        (UnknownTenant, lambda lg: lg.reserve("ghost", "r", 1, 1)),
        (UnknownTenant, lambda lg: lg.usage("ghost")),
        (DuplicateRequest, lambda lg: lg.reserve("acme", "open", 1, 1)),
        (DuplicateRequest, lambda lg: lg.reserve("acme", "done", 1, 1)),
        (DuplicateRequest, lambda lg: lg.reserve("acme", "open", 10**6, 1)),  # not over budget
        (UnknownReservation, lambda lg: lg.settle("ghost", 1, 1, 1)),
        (UnknownReservation, lambda lg: lg.release("ghost")),
    ],
)
def test_unknown_and_duplicate_ids_are_refused(
    seeded: Ledger, error: type[LedgerError], call: Call
) -> None:
    before = snapshot(seeded)
    with pytest.raises(error):
        call(seeded)
    assert snapshot(seeded) == before


def test_a_refused_id_was_never_reserved(seeded: Ledger) -> None:
    with pytest.raises(BudgetExceeded):
        seeded.reserve("acme", "big", 10**6, 1)
    seeded.reserve("acme", "big", 1, 1)  # nothing of the refused attempt was kept
    assert seeded.usage("acme").in_flight == 2


def test_a_released_id_cannot_be_reused(seeded: Ledger) -> None:
    seeded.release("open")
    with pytest.raises(DuplicateRequest, match="open"):
        seeded.reserve("acme", "open", 1, 1)


def test_longest_valid_names_work(ledger: Ledger) -> None:
    name = "t" * 253
    ledger.configure_tenant(name, replace(TenantLimits(), limit_micros=5))
    ledger.reserve(name, "r" * 253, 5, 0)
    assert ledger.settle("r" * 253, 5, 0, 0).tenant == name
    assert ledger.tenants() == [name]
