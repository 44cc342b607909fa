"""Tokens served per second, per ModelDeployment, for the cost timer: from Prometheus's HTTP API
when a Prometheus URL is configured (one query for all models), else by scraping each
gateway's /metrics and taking the counter's rate between ticks. The metric names consumed are
defined here, once."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

TOKENS_METRIC = "frugalserve_tokens_total"
"""Counter of tokens charged, labelled tenant, model and kind (prompt | completion): the
gateway's ledger totals (frugalserve/serving/metrics.py)."""
MODEL_LABEL = "model"
"""Label of TOKENS_METRIC naming the ModelDeployment."""
NAMESPACE_LABEL = "namespace"
"""Label Prometheus attaches to scraped series (ServiceMonitor / kubernetes_sd relabeling)."""

logger = logging.getLogger(__name__)


Model = tuple[str, str]
"""(namespace, name) of a ModelDeployment."""


class TokenRates(Protocol):
    """Tokens served per second by each model: None when not known yet; a model whose source
    could not be read is left out (logged)."""

    def __call__(self, models: list[Model]) -> dict[Model, float | None]: ...


def prometheus_query(window_s: int) -> str:
    """The PromQL for every model's token rate over the trailing window. Every gateway replica
    reports the same ledger totals (serving/metrics.py), so duplicates across scrape targets
    are collapsed with max before tenants and kinds are summed."""
    per_series = f"{NAMESPACE_LABEL}, {MODEL_LABEL}, tenant, kind"
    rate = f"rate({TOKENS_METRIC}[{window_s}s])"
    return f"sum by ({NAMESPACE_LABEL}, {MODEL_LABEL}) (max by ({per_series}) ({rate}))"


class PrometheusRates:
    """Token rates from one Prometheus instant query per tick, for all models at once."""

    def __init__(self, client: httpx.Client, url: str, window_s: int) -> None:
        self._client, self._url, self._window_s = client, url.rstrip("/"), window_s

    def __call__(self, models: list[Model]) -> dict[Model, float | None]:
        query = prometheus_query(self._window_s)
        try:
            response = self._client.get(f"{self._url}/api/v1/query", params={"query": query})
            response.raise_for_status()
            result = response.json()["data"]["result"]
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            logger.warning("live cost not updated: Prometheus query %r failed: %s", query, exc)
            return {}
        rates: dict[Model, float | None] = {}
        for series in result:
            labels, value = series["metric"], float(series["value"][1])
            key = (labels.get(NAMESPACE_LABEL, ""), labels.get(MODEL_LABEL, ""))
            rates[key] = None if math.isnan(value) else value
        return {model: rates.get(model) for model in models}


def tokens_served(text: str, name: str) -> float:
    """The sum of TOKENS_METRIC samples for model `name` in a Prometheus text exposition."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == TOKENS_METRIC and sample.labels.get(MODEL_LABEL) == name:
                total += sample.value
    return total


class ScrapeRates:
    """Token rates from two successive scrapes of each gateway's /metrics (None on the first)."""

    def __init__(
        self,
        client: httpx.Client,
        url_template: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client, self._template, self._clock = client, url_template, clock
        self._last: dict[Model, tuple[float, float]] = {}

    def __call__(self, models: list[Model]) -> dict[Model, float | None]:
        rates = {}
        for namespace, name in models:
            url = self._template.format(name=name, namespace=namespace)
            try:
                response = self._client.get(url)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                logger.warning("live cost of %s/%s not updated: scraping %s failed: %s",
                               namespace, name, url, exc)
                continue
            rates[(namespace, name)] = self._rate((namespace, name), tokens_served(response.text,
                                                                                   name))
        return rates

    def _rate(self, model: Model, total: float) -> float | None:
        now, previous = self._clock(), self._last.get(model)
        self._last[model] = (now, total)
        if previous is None or now <= previous[0] or total < previous[1]:
            return None  # first sample, or the counter restarted with the gateway
        return (total - previous[1]) / (now - previous[0])
