"""UTC budget-period boundaries, used by the SQLite ledger (the Redis ledger computes the same
in Lua, `lua.PERIOD_BOUNDS`, and a test checks they agree)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .types import Period


def period_bounds(period: Period, now_s: int) -> tuple[int, int | None]:
    """The [start, end) of the period holding `now_s`, in epoch seconds; NEVER starts now."""
    now = datetime.fromtimestamp(now_s, UTC)
    if period is Period.NEVER:
        return now_s, None
    if period is Period.HOURLY:
        start = now.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif period is Period.DAILY:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    elif period is Period.WEEKLY:
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(weeks=1)
    else:
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
    return int(start.timestamp()), int(end.timestamp())


def utc(epoch_us: int) -> datetime:
    """An aware UTC datetime from epoch microseconds."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=epoch_us)
