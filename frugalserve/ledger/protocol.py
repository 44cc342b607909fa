"""The `Ledger` protocol every backend implements; the gateway (admission, settlement) and the
operator (limits, usage for Tenant status) program against it."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from .types import Reservation, Settlement, TenantLimits, Totals, Usage


class Ledger(Protocol):
    """Per-tenant budgets, exact under any concurrency. Sync; async callers use a thread."""

    def configure_tenant(self, tenant: str, limits: TenantLimits) -> None:
        """Create a tenant or update its limits; spent usage is never lost."""
        ...

    def reserve(
        self,
        tenant: str,
        request_id: str,
        cost_max: int,
        tokens_max: int,
        *,
        lease_s: float = 300.0,
        model: str = "",
        price_version: str = "",
    ) -> Reservation:
        """Admit a request's worst case atomically, with its rate limits, or raise
        BudgetExceeded / RateLimited / UnknownTenant / DuplicateRequest."""
        ...

    def settle(
        self, request_id: str, cost_micros: int, prompt_tokens: int, completion_tokens: int
    ) -> Settlement:
        """Charge the actual cost, clamped to the reservation; a repeat returns the first."""
        ...

    def release(self, request_id: str) -> None:
        """Drop a reservation that produced nothing; a no-op once settled or released."""
        ...

    def expire(self) -> int:
        """Charge every reservation whose lease ran out in full; return how many."""
        ...

    def usage(self, tenant: str) -> Usage:
        """A consistent snapshot of the tenant's current period."""
        ...

    def totals(self) -> list[Totals]:
        """Settled tokens and cost per (tenant, model) since the beginning, sorted; updated
        atomically with each settlement, so they always equal the sum of the records."""
        ...

    def tenants(self) -> list[str]:
        """Every configured tenant, sorted."""
        ...

    def settlements(
        self, tenant: str | None = None, since: datetime | None = None
    ) -> list[Settlement]:
        """Settlement records in the order they were written, optionally filtered."""
        ...

    def close(self) -> None:
        """Release connections; the ledger is unusable afterwards."""
        ...


def clamp(
    cost: int, prompt: int, completion: int, cost_max: int, tokens_max: int
) -> tuple[int, int, int, bool]:
    """Cut a reported charge down to its reservation (completion tokens first)."""
    clamped = cost > cost_max or prompt + completion > tokens_max
    cost = min(cost, cost_max)
    prompt = min(prompt, tokens_max)
    completion = min(completion, tokens_max - prompt)
    return cost, prompt, completion, clamped


def remaining(limit: int | None, used: int) -> int | None:
    """What is left of a limit (never negative); None when the limit is unset."""
    return None if limit is None else max(0, limit - used)
