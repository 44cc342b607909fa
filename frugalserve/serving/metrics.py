"""Prometheus metrics of one gateway replica, in its own registry, served at /metrics.

/metrics reaches a random gateway replica through the Serve proxy, so two kinds of series:

- billing series, `frugalserve_tokens_total{tenant,model,kind}` and
  `frugalserve_spend_micro_usd_total{tenant,model}`, are read from the ledger's settlement
  totals at scrape time (`LedgerTotals`): every replica reports the same exact totals, so
  `rate()` and the operator's scrapes never jump between replicas. Aggregate them with `max`
  (or scrape one replica), never `sum` across replicas;
- every other series is this replica's own (latency, time to first token and tokens/s
  histograms, in-flight reservations, request, rejection and downgrade counters, cost and MoE
  gauges) and carries a `replica` label, so series of different replicas never collide;
  `sum without (replica)` aggregates them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from frugalserve.ledger import Ledger
from frugalserve.pricing.live import CostSnapshot

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TPS_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class LedgerTotals(Collector):
    """Token and spend counters from `Ledger.totals()`, read at each scrape."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        tokens = CounterMetricFamily("frugalserve_tokens", "Tokens charged (ledger totals).",
                                     labels=["tenant", "model", "kind"])
        spend = CounterMetricFamily("frugalserve_spend_micro_usd",
                                    "Charged micro-USD (ledger totals).",
                                    labels=["tenant", "model"])
        for t in self.ledger.totals():
            tokens.add_metric([t.tenant, t.model, "prompt"], t.prompt_tokens)
            tokens.add_metric([t.tenant, t.model, "completion"], t.completion_tokens)
            spend.add_metric([t.tenant, t.model], t.cost_micros)
        yield tokens
        yield spend


class WithReplica(Collector):
    """Every series of `inner` with a `replica` label added."""

    def __init__(self, inner: CollectorRegistry, replica: str) -> None:
        self.inner, self.replica = inner, replica

    def collect(self) -> Iterator[Metric]:
        for family in self.inner.collect():
            family.samples = [s._replace(labels={**s.labels, "replica": self.replica})
                              for s in family.samples]
            yield family


class Metrics:
    """The gateway's metric families; names are prefixed `frugalserve_`. `replica` names this
    gateway replica (the Serve replica id; random by default)."""

    def __init__(self, ledger: Ledger, replica: str | None = None) -> None:
        self.replica = replica or uuid.uuid4().hex[:8]
        self.registry = CollectorRegistry()
        self.registry.register(LedgerTotals(ledger))
        r = CollectorRegistry()  # this replica's own series, labelled on the way out
        self.registry.register(WithReplica(r, self.replica))
        self.requests = Counter("frugalserve_requests", "Finished requests.",
                                ["tenant", "model", "outcome"], registry=r)
        self.rejections = Counter("frugalserve_rejections", "Refused requests.",
                                  ["tenant", "reason"], registry=r)
        self.downgrades = Counter("frugalserve_downgrades", "Requests routed to a fallback.",
                                  ["tenant", "model", "fallback", "reason"], registry=r)
        self.latency = Histogram("frugalserve_request_latency_seconds", "Request latency.",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("frugalserve_time_to_first_token_seconds", "Time to first token.",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.tps = Histogram("frugalserve_tokens_per_second", "Completion tokens/s per request.",
                             ["model"], buckets=TPS_BUCKETS, registry=r)
        self.in_flight = Gauge("frugalserve_reservations_in_flight",
                               "Open reservations held by this replica.", ["tenant"], registry=r)
        self.live_price = Gauge("frugalserve_live_cost_per_million_tokens_usd",
                                "Live cost of 1M tokens.", ["model", "kind"], registry=r)
        self.hourly = Gauge("frugalserve_hourly_cost_usd", "GPU cost per hour of ready replicas.",
                            ["model"], registry=r)
        self.idle = Gauge("frugalserve_idle_cost_usd_per_hour", "Hourly cost of idle GPU time.",
                          ["model"], registry=r)
        self.margin = Gauge("frugalserve_margin_per_million_tokens_usd",
                            "List price minus live cost.", ["model", "kind"], registry=r)
        self.replicas = Gauge("frugalserve_ready_replicas", "Ready model replicas.",
                              ["model"], registry=r)
        self.expert_load = Gauge("frugalserve_moe_expert_tokens",
                                 "Tokens routed to an expert, all layers.",
                                 ["model", "expert"], registry=r)
        self.expert_cv = Gauge("frugalserve_moe_expert_load_cv",
                               "Coefficient of variation of recent expert load (imbalance).",
                               ["model", "layer"], registry=r)
        self.expert_collapse = Gauge("frugalserve_moe_collapsed_expert_share",
                                     "Share of experts that received no recent tokens.",
                                     ["model", "layer"], registry=r)

    def cost(self, model: str, s: CostSnapshot) -> None:
        self.live_price.labels(model, "input").set(s.live_input_per_million_usd)
        self.live_price.labels(model, "output").set(s.live_output_per_million_usd)
        self.hourly.labels(model).set(s.hourly_cost_usd)
        self.idle.labels(model).set(s.idle_cost_usd_per_hour)
        self.replicas.labels(model).set(s.ready_replicas)
        for kind, margin in (("input", s.margin_input_per_million_usd),
                             ("output", s.margin_output_per_million_usd)):
            if margin is not None:
                self.margin.labels(model, kind).set(margin)

    def engine(self, model: str, stats: dict[str, Any]) -> None:
        """MoE expert load from an engine's `stats()` (dense engines report no `moe`)."""
        moe = stats.get("moe")
        if not moe:
            return
        for expert, tokens in enumerate(zip(*moe["expert_tokens"], strict=True)):
            self.expert_load.labels(model, str(expert)).set(sum(tokens))
        for layer, cv in enumerate(moe["cv"]):
            self.expert_cv.labels(model, str(layer)).set(cv)
        for layer, share in enumerate(moe["collapsed_share"]):
            self.expert_collapse.labels(model, str(layer)).set(share)

    def render(self) -> bytes:
        return generate_latest(self.registry)

