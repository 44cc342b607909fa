"""Live cost of one model deployment over a trailing window, and the per-token prices in force.

The gateway feeds it every finished request and refreshes it every few seconds:

- hourly cost = ready replicas x gpusPerReplica x gpuHourUSD;
- busy share = fraction of the window with at least one request in flight; the rest is idle
  cost, reported apart (as OpenCost does) and never put in tenants' bills;
- live $/1M tokens = busy cost / weighted tokens x 1e6, where a prompt token weighs the measured
  prefill-seconds-per-token over decode-seconds-per-token (clipped to [0.01, 1]);
- floor: weighted tokens count at least `floor_tokens_per_hour` per busy hour, so a trickle of
  traffic cannot price a token absurdly; before any traffic the price is the one at the floor;
- smoothing: each refresh moves the price `smoothing` of the way to the new window value; a
  window without tokens keeps the last price (idle time does not raise it).

List prices, when set, are what tenants pay; the margin is list price minus live cost.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from frugalserve.pricing.cost import hourly_cost_usd

DEFAULT_WINDOW_S = 300.0
DEFAULT_FLOOR_TOKENS_PER_HOUR = 100_000.0
DEFAULT_SMOOTHING = 0.3


class PriceSource(Protocol):
    """A model's GPU price and optional list prices (`serving.config.PriceConfig` is one)."""

    @property
    def gpu_hour_usd(self) -> float: ...
    @property
    def gpus_per_replica(self) -> int: ...
    @property
    def input_per_million_usd(self) -> float | None: ...
    @property
    def output_per_million_usd(self) -> float | None: ...
    @property
    def version(self) -> str: ...


@dataclass(frozen=True)
class Prices:
    """Micro-USD per token (equal to USD per 1M tokens) locked for one request at admission."""

    input: float
    output: float
    version: str

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Micro-USD for the tokens, rounded up (so a smaller count never costs more)."""
        exact = self.input * prompt_tokens + self.output * completion_tokens
        return math.ceil(round(exact, 6))


@dataclass(frozen=True)
class CostSnapshot:
    """One refresh of a model's live cost, as exported to metrics."""

    ready_replicas: int
    hourly_cost_usd: float
    busy_share: float
    idle_cost_usd_per_hour: float
    tokens_per_hour: float
    prompt_weight: float
    live_output_per_million_usd: float
    live_input_per_million_usd: float
    margin_input_per_million_usd: float | None
    margin_output_per_million_usd: float | None


@dataclass
class _Totals:
    at: float
    busy_s: float = 0.0
    prompt: int = 0
    completion: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0


class LiveCost:
    """Trailing-window cost tracker of one model (per gateway replica; load is balanced)."""

    def __init__(
        self,
        price: PriceSource,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        floor_tokens_per_hour: float = DEFAULT_FLOOR_TOKENS_PER_HOUR,
        smoothing: float = DEFAULT_SMOOTHING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.price = price
        self.window_s = window_s
        self.floor = floor_tokens_per_hour
        self.smoothing = smoothing
        self._clock = clock
        self._totals = _Totals(at=clock())
        self._active = 0
        self._busy_since = 0.0
        self._samples: deque[_Totals] = deque([_Totals(at=self._totals.at)])
        self._live_output: float | None = None
        self._weight = 1.0
        self.snapshot = self.refresh(ready_replicas=1)

    def begin(self) -> None:
        """A request started (the GPU is busy while any is in flight)."""
        if self._active == 0:
            self._busy_since = self._clock()
        self._active += 1

    def end(self, prompt_tokens: int, completion_tokens: int, prefill_s: float,
            decode_s: float) -> None:
        """A request finished having served these tokens in these measured times."""
        self._active -= 1
        if self._active == 0:
            self._totals.busy_s += self._clock() - self._busy_since
        t = self._totals
        t.prompt += prompt_tokens
        t.completion += completion_tokens
        t.prefill_s += prefill_s
        t.decode_s += decode_s

    def _now_totals(self) -> _Totals:
        now = self._clock()
        t = self._totals
        busy = t.busy_s + (now - self._busy_since if self._active else 0.0)
        return _Totals(now, busy, t.prompt, t.completion, t.prefill_s, t.decode_s)

    def refresh(self, ready_replicas: int) -> CostSnapshot:
        """Recompute over the window with the replicas now ready; returns and keeps the snapshot."""
        now = self._now_totals()
        self._samples.append(now)
        while len(self._samples) > 2 and self._samples[1].at <= now.at - self.window_s:
            self._samples.popleft()
        old = self._samples[0]
        span = max(now.at - old.at, 1e-9)
        busy = min(now.busy_s - old.busy_s, span)
        prompt, completion = now.prompt - old.prompt, now.completion - old.completion
        prefill, decode = now.prefill_s - old.prefill_s, now.decode_s - old.decode_s
        if prompt and completion and prefill > 0 and decode > 0:
            self._weight = min(max((prefill / prompt) / (decode / completion), 0.01), 1.0)
        hourly = hourly_cost_usd(ready_replicas, self.price.gpus_per_replica,
                                 self.price.gpu_hour_usd)
        weighted = completion + self._weight * prompt
        if weighted > 0:
            busy_cost = hourly * busy / 3600.0
            raw = busy_cost / max(weighted, self.floor * busy / 3600.0) * 1e6
            prev = raw if self._live_output is None else self._live_output
            self._live_output = prev + self.smoothing * (raw - prev)
        live_out = hourly / self.floor * 1e6 if self._live_output is None else self._live_output
        live_out = live_out if hourly else 0.0
        live_in = live_out * self._weight
        p = self.price
        self.snapshot = CostSnapshot(
            ready_replicas=ready_replicas,
            hourly_cost_usd=hourly,
            busy_share=busy / span,
            idle_cost_usd_per_hour=hourly * (1.0 - busy / span),
            tokens_per_hour=(prompt + completion) / span * 3600.0,
            prompt_weight=self._weight,
            live_output_per_million_usd=live_out,
            live_input_per_million_usd=live_in,
            margin_input_per_million_usd=(
                None if p.input_per_million_usd is None else p.input_per_million_usd - live_in),
            margin_output_per_million_usd=(
                None if p.output_per_million_usd is None else p.output_per_million_usd - live_out),
        )
        return self.snapshot

    def prices(self) -> Prices:
        """List prices when set (each side separately), else the live ones."""
        p, s = self.price, self.snapshot
        inp = p.input_per_million_usd
        out = p.output_per_million_usd
        if inp is not None and out is not None:
            return Prices(inp, out, f"list:{p.version}")
        live_in = s.live_input_per_million_usd if inp is None else inp
        live_out = s.live_output_per_million_usd if out is None else out
        return Prices(live_in, live_out, f"live:{p.version}:{live_in:.6g}:{live_out:.6g}")
