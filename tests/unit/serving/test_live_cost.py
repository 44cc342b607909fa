"""Live cost over a trailing window with a fake clock: hourly cost, busy share, idle cost,
floor, smoothing, measured prompt weight, list prices and margin."""

from __future__ import annotations

import pytest

from frugalserve.pricing.live import LiveCost, Prices
from frugalserve.serving.config import PriceConfig

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def tracker(clock: Clock, **prices: float) -> LiveCost:
    price = PriceConfig(gpu_hour_usd=3.6, gpus_per_replica=2, **prices)
    return LiveCost(price, window_s=60, floor_tokens_per_hour=1000, smoothing=1.0, clock=clock)


def serve(cost: LiveCost, clock: Clock, seconds: float, prompt: int, completion: int) -> None:
    cost.begin()
    clock.t += seconds
    cost.end(prompt, completion, prefill_s=seconds * 0.1, decode_s=seconds * 0.9)


def test_price_is_busy_cost_over_weighted_tokens_and_idle_is_apart() -> None:
    clock = Clock()
    cost = tracker(clock)
    serve(cost, clock, 30, prompt=1000, completion=9000)
    clock.t += 30  # 30 s idle
    s = cost.refresh(ready_replicas=2)
    assert s.hourly_cost_usd == pytest.approx(2 * 2 * 3.6)
    assert s.busy_share == pytest.approx(0.5)
    assert s.idle_cost_usd_per_hour == pytest.approx(14.4 * 0.5)
    # prefill 3 s / 1000 tokens vs decode 27 s / 9000 tokens -> a prompt token weighs 1
    assert s.prompt_weight == pytest.approx(1.0)
    busy_cost = 14.4 * 30 / 3600
    assert s.live_output_per_million_usd == pytest.approx(busy_cost / 10_000 * 1e6)
    assert cost.prices().output == pytest.approx(s.live_output_per_million_usd)
    assert cost.prices().version.startswith("live:")


def test_floor_bounds_the_price_of_a_trickle_and_idle_keeps_it() -> None:
    clock = Clock()
    cost = tracker(clock)
    cold = cost.refresh(1).live_output_per_million_usd
    assert cold == pytest.approx(7.2 / 1000 * 1e6)  # the price at the floor before traffic
    serve(cost, clock, 36, prompt=0, completion=1)  # 1 token in 36 busy seconds
    trickle = cost.refresh(1).live_output_per_million_usd
    assert trickle == pytest.approx(7.2 * 0.01 / 10 * 1e6)  # floor: 1000/h * 0.01 h = 10
    clock.t += 600
    assert cost.refresh(1).live_output_per_million_usd == pytest.approx(trickle)


def test_smoothing_moves_part_of_the_way() -> None:
    clock = Clock()
    cost = LiveCost(PriceConfig(gpu_hour_usd=3.6, gpus_per_replica=1), window_s=10,
                    floor_tokens_per_hour=1, smoothing=0.5, clock=clock)
    serve(cost, clock, 10, 0, 1000)
    first = cost.refresh(1).live_output_per_million_usd
    serve(cost, clock, 10, 0, 3000)
    clock.t += 0.001
    raw = 3.6 * 10 / 3600 / 3000 * 1e6
    assert cost.refresh(1).live_output_per_million_usd == pytest.approx(
        first + 0.5 * (raw - first), rel=1e-3)


def test_list_prices_win_and_margin_is_reported() -> None:
    clock = Clock()
    cost = tracker(clock, input_per_million_usd=1.0, output_per_million_usd=4.0)
    serve(cost, clock, 10, 100, 900)
    s = cost.refresh(1)
    p = cost.prices()
    assert (p.input, p.output) == (1.0, 4.0) and p.version.startswith("list:")
    assert s.margin_output_per_million_usd == pytest.approx(4.0 - s.live_output_per_million_usd)


def test_cost_rounds_up_in_micros() -> None:
    p = Prices(input=0.1, output=0.3, version="v")
    assert p.cost(0, 0) == 0
    assert p.cost(10, 10) == 4
    assert p.cost(1, 1) == 1
    assert p.cost(3, 0) == 1  # 0.30000000000000004 is not 1 micro-USD more
