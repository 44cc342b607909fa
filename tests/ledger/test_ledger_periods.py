"""Budget periods: Python's boundaries are calendar-correct, and the Lua copy agrees."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from frugalserve.ledger import Period, lua
from frugalserve.ledger.localredis import LocalRedis
from frugalserve.ledger.periods import period_bounds

pytestmark = pytest.mark.ledger

TIMES = st.integers(min_value=0, max_value=4_102_444_800)  # 1970 .. 2100
PERIODS = st.sampled_from([p for p in Period if p is not Period.NEVER])


@given(PERIODS, TIMES)
def test_bounds_hold_now_and_tile_the_timeline(period: Period, now: int) -> None:
    start, end = period_bounds(period, now)
    assert end is not None and start <= now < end
    assert period_bounds(period, end) == (end, period_bounds(period, end)[1])
    assert period_bounds(period, end - 1) == (start, end)
    begin = datetime.fromtimestamp(start, UTC)
    assert (begin.minute, begin.second) == (0, 0)
    if period is not Period.HOURLY:
        assert begin.hour == 0
    if period is Period.WEEKLY:
        assert begin.weekday() == 0
    if period is Period.MONTHLY:
        assert begin.day == 1


def test_known_boundaries() -> None:
    leap = int(datetime(2024, 2, 29, 13, 5, tzinfo=UTC).timestamp())
    assert period_bounds(Period.MONTHLY, leap) == (
        int(datetime(2024, 2, 1, tzinfo=UTC).timestamp()),
        int(datetime(2024, 3, 1, tzinfo=UTC).timestamp()),
    )
    assert period_bounds(Period.NEVER, leap) == (leap, None)


@settings(max_examples=300, deadline=None)
@given(period=st.sampled_from(list(Period)), now=TIMES)
def test_lua_bounds_agree_with_python(redis_server: LocalRedis, period: Period, now: int) -> None:
    client = redis.Redis(port=redis_server.port)
    try:
        script = (
            lua.PRELUDE
            + lua.PERIOD_BOUNDS
            + ("local s, e = period_bounds(ARGV[1], tonumber(ARGV[2])) return {istr(s), istr(e)}")
        )
        start, end = (int(v) for v in client.eval(script, 0, period.value, now))  # type: ignore[union-attr]
    finally:
        client.close()
    assert (start, None if end == -1 else end) == period_bounds(period, now)
