"""Value types and errors of the budget ledger; the gateway and the operator import them from
`frugalserve.ledger`. Money is integer micro-USD, tokens are integers, times are UTC."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Period(StrEnum):
    """How often a tenant's budget resets, at UTC calendar boundaries (weeks start Monday)."""

    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    NEVER = "never"


@dataclass(frozen=True)
class TenantLimits:
    """A tenant's limits, as the operator reads them from the Tenant spec."""

    limit_micros: int | None = None
    """Dollar budget per period in micro-USD; None means unlimited."""
    limit_tokens: int | None = None
    """Token budget (prompt + completion) per period; None means unlimited."""
    period: Period = Period.MONTHLY
    """When spent usage resets."""
    requests_per_minute: int | None = None
    """Admitted requests per UTC clock minute (fixed window); None means unlimited."""
    tokens_per_minute: int | None = None
    """Reserved tokens (`tokens_max`) per UTC clock minute (fixed window); None = unlimited."""


@dataclass(frozen=True)
class Reservation:
    """An admitted request's hold on the budget, until settled, released or expired."""

    tenant: str
    request_id: str
    cost_max: int
    tokens_max: int
    expires_at: float
    """Epoch seconds, by the ledger's clock, after which the hold is charged in full."""


@dataclass(frozen=True)
class Usage:
    """A consistent snapshot of one tenant's current period."""

    tenant: str
    spent_micros: int
    reserved_micros: int
    tokens_prompt: int
    tokens_completion: int
    reserved_tokens: int
    limit_micros: int | None
    limit_tokens: int | None
    remaining_micros: int | None
    remaining_tokens: int | None
    period_start: datetime
    period_end: datetime | None
    in_flight: int


@dataclass(frozen=True)
class Settlement:
    """One append-only record of what a request was charged."""

    request_id: str
    tenant: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    price_version: str
    at: datetime
    clamped: bool = False
    """The reported cost or tokens exceeded the reservation and were cut down to it."""
    expired: bool = False
    """The lease ran out before settlement, so the reservation was charged in full."""


@dataclass(frozen=True)
class Totals:
    """Everything ever settled for one (tenant, model), across all periods: the source of the
    gateway's token and spend counters, identical on every replica."""

    tenant: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


class LedgerError(Exception):
    """Base class of every error the ledger raises on purpose."""


class InvalidLedgerInput(LedgerError, ValueError):
    """A parameter is out of range or malformed; `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


class UnknownTenant(LedgerError):
    """The tenant was never configured."""

    def __init__(self, tenant: str) -> None:
        super().__init__(f"unknown tenant {tenant!r}")
        self.tenant = tenant


class UnknownReservation(LedgerError):
    """No open or settled reservation has this request id (never reserved, or released)."""

    def __init__(self, request_id: str, detail: str = "was never reserved") -> None:
        super().__init__(f"request {request_id!r} {detail}")
        self.request_id = request_id


class DuplicateRequest(LedgerError):
    """The request id was already used for a reservation."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request id {request_id!r} was already reserved")
        self.request_id = request_id


class BudgetExceeded(LedgerError):
    """Admission refused: the reservation would take the tenant over its budget."""

    def __init__(
        self,
        tenant: str,
        reason: str,
        remaining_micros: int | None,
        remaining_tokens: int | None,
        resets_at: datetime | None,
    ) -> None:
        when = resets_at.isoformat() if resets_at else "never"
        super().__init__(
            f"tenant {tenant!r} over {reason}: remaining_micros={remaining_micros}, "
            f"remaining_tokens={remaining_tokens}, resets at {when}"
        )
        self.tenant = tenant
        self.reason = reason
        self.remaining_micros = remaining_micros
        self.remaining_tokens = remaining_tokens
        self.resets_at = resets_at


class RateLimited(LedgerError):
    """Admission refused by a per-minute rate limit; retry after `retry_after_s` seconds."""

    def __init__(self, tenant: str, reason: str, retry_after_s: float) -> None:
        super().__init__(f"tenant {tenant!r} over {reason}; retry after {retry_after_s:.3f}s")
        self.tenant = tenant
        self.reason = reason
        self.retry_after_s = retry_after_s
