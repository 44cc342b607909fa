"""Leases: a reservation whose holder died (a gateway replica killed mid-request) is charged in
full by the gateway's expiry sweeper once its lease runs out, so it cannot hold the tenant's
budget forever; without the sweeper it stays reserved (negative control). A settle that
arrives after the lease ran out is accepted: the request was charged once, in full."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from frugalserve.ledger import BudgetExceeded
from frugalserve.ledger.sqlite import SQLiteLedger
from frugalserve.serving.clients import EngineClient
from frugalserve.serving.engine import SamplingParams
from frugalserve.serving.gateway import ExpirySweeper, Gateway, Lease
from frugalserve.serving.protocol import CompletionRequest
from tests.serving.fake_engine import FakeEngine
from tests.unit.serving.conftest import model, user_config

pytestmark = pytest.mark.unit
REQUEST = CompletionRequest(model="big", prompt="p" * 10, max_tokens=20)
COST_MAX = 10 * 1 + 20 * 10  # big's prices: 1 and 10 micro-USD per prompt / completion token


class Clock:
    """The real clock plus an offset; starts 30 s before tomorrow's UTC midnight."""

    def __init__(self) -> None:
        now = time.time()
        self.offset = (now - now % 86400) + 2 * 86400 - 30 - now

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[SQLiteLedger, Clock]]:
    clock = Clock()
    led = SQLiteLedger(str(tmp_path / "ledger.db"), clock=clock)
    yield led, clock
    led.close()


def gateway(ledger: SQLiteLedger, lease_s: float) -> Gateway:
    gw = Gateway({"big": model("big"), "small": model("small")},
                 {"big": EngineClient(FakeEngine("big")),
                  "small": EngineClient(FakeEngine("small"))},
                 ledger, lease=Lease(base_s=lease_s, per_token_s=0.0))
    gw.configure(user_config(limit_micros=COST_MAX))  # a daily budget for one request
    return gw


async def complete(gw: Gateway) -> None:
    adm = await gw.admit(gw.authenticate("Bearer sk-alice"), REQUEST)
    async for _ in gw.run(adm, SamplingParams(max_tokens=adm.max_tokens)):
        pass


def wait_settled(ledger: SQLiteLedger, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while ledger.usage("alice").in_flight and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize("sweep", [True, False])
async def test_dead_holder_is_charged_in_full_after_its_lease(
        clocked: tuple[SQLiteLedger, Clock], sweep: bool) -> None:
    ledger, clock = clocked
    gw = gateway(ledger, lease_s=0.3)
    sweeper = ExpirySweeper(ledger, every_s=0.05)
    if sweep:
        sweeper.start()
    try:
        await gw.admit(gw.authenticate("Bearer sk-alice"), REQUEST)  # the holder dies here
        await asyncio.sleep(0.5)  # the lease runs out
        if sweep:
            await asyncio.to_thread(wait_settled, ledger)
        clock.offset += 60  # the next day: a fresh daily budget
        usage = ledger.usage("alice")
        if not sweep:  # negative control: the dead holder's reservation blocks the new day
            assert (usage.reserved_micros, usage.in_flight, usage.spent_micros) == (
                COST_MAX, 1, 0)
            assert ledger.settlements("alice") == []
            with pytest.raises(BudgetExceeded):
                await complete(gw)
            return
        [charged] = ledger.settlements("alice")
        assert charged.expired and charged.cost_micros == COST_MAX
        assert (charged.prompt_tokens, charged.completion_tokens) == (0, 10 + 20)
        assert (usage.reserved_micros, usage.in_flight, usage.spent_micros) == (0, 0, 0)
        await complete(gw)  # admitted again within the new day's budget
        assert ledger.usage("alice").spent_micros == COST_MAX
    finally:
        sweeper.stop()


async def test_settle_after_expiry_is_charged_once_in_full(
        clocked: tuple[SQLiteLedger, Clock]) -> None:
    ledger, _ = clocked
    gw = gateway(ledger, lease_s=0.2)
    adm = await gw.admit(gw.authenticate("Bearer sk-alice"), REQUEST)
    await asyncio.sleep(0.3)
    assert ledger.expire() == 1  # another replica's sweeper got there first
    deltas = [d async for d in gw.run(adm, SamplingParams(max_tokens=adm.max_tokens))]
    assert deltas[-1].completion_tokens == 20  # the client was served in full
    [charged] = ledger.settlements("alice")
    assert charged.expired and charged.cost_micros == COST_MAX
    usage = ledger.usage("alice")
    assert (usage.spent_micros, usage.reserved_micros, usage.in_flight) == (COST_MAX, 0, 0)


def test_lease_covers_the_longest_generation() -> None:
    lease = Lease()
    assert lease.seconds(0) == 120.0
    assert lease.seconds(4096) == 120.0 + 0.5 * 4096
    assert lease.seconds(10**9) == 7 * 86400.0
