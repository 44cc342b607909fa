"""The budget ledger: exact per-tenant reservations, settlements and rate limits (SQLite, Redis).
The gateway reserves and settles through it; the operator configures tenants and reads usage."""

from __future__ import annotations

from urllib.parse import urlsplit

from .protocol import Ledger
from .types import (
    BudgetExceeded,
    DuplicateRequest,
    InvalidLedgerInput,
    LedgerError,
    Period,
    RateLimited,
    Reservation,
    Settlement,
    TenantLimits,
    Totals,
    UnknownReservation,
    UnknownTenant,
    Usage,
)

__all__ = [
    "BudgetExceeded",
    "DuplicateRequest",
    "InvalidLedgerInput",
    "Ledger",
    "LedgerError",
    "Period",
    "RateLimited",
    "Reservation",
    "Settlement",
    "TenantLimits",
    "Totals",
    "UnknownReservation",
    "UnknownTenant",
    "Usage",
    "open_ledger",
]


def open_ledger(url: str) -> Ledger:
    """Open a backend by URL: `sqlite:///relative.db`, `sqlite:////abs/path.db` (SQLAlchemy's
    convention: the path is what follows `sqlite:///`), `redis://host:port/db`, `rediss://…`."""
    scheme = urlsplit(url).scheme if isinstance(url, str) else ""
    if scheme == "sqlite":
        from .sqlite import SQLiteLedger

        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise InvalidLedgerInput("url", f"{url!r}: expected sqlite:///path/to/file.db")
        return SQLiteLedger(path)
    if scheme in ("redis", "rediss", "unix"):
        from .redis_backend import RedisLedger

        return RedisLedger.from_url(url)
    raise InvalidLedgerInput("url", f"{url!r}: expected a sqlite:///, redis:// or rediss:// URL")
