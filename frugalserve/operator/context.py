"""What the handlers share for the operator's lifetime: settings, the one API client, the key
hash cache, the metrics source and the ledger. Built once by `run` (or a test)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from kubernetes import client as k8s

from frugalserve.ledger import Ledger, open_ledger
from frugalserve.operator.kube import Kube
from frugalserve.operator.metrics import PrometheusRates, ScrapeRates, TokenRates
from frugalserve.operator.reconcile import KeyHashes
from frugalserve.operator.render import RenderSettings
from frugalserve.operator.settings import OperatorSettings


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Context:
    """Long-lived collaborators of the handlers (closed by the operator's cleanup)."""

    settings: OperatorSettings
    kube: Kube
    rate: TokenRates
    http: httpx.Client
    ledger: Ledger | None
    clock: Callable[[], datetime] = utc_now
    hashes: KeyHashes = field(default_factory=KeyHashes)

    @classmethod
    def build(cls, settings: OperatorSettings, api: k8s.ApiClient) -> Context:
        """Connect the metrics source and the ledger named by the settings."""
        http = httpx.Client(timeout=settings.http_timeout_s)
        rate: TokenRates = (
            PrometheusRates(http, settings.prometheus_url, settings.cost_window_s)
            if settings.prometheus_url
            else ScrapeRates(http, settings.metrics_url_template)
        )
        ledger = open_ledger(settings.ledger_url) if settings.ledger_url else None
        return cls(settings=settings, kube=Kube(api), rate=rate, http=http, ledger=ledger)

    @property
    def render_settings(self) -> RenderSettings:
        return self.settings.render_settings()

    def now(self) -> str:
        """The current time as RFC 3339 (whole seconds) for condition transitions."""
        return self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")

    def close(self) -> None:
        self.http.close()
        if self.ledger is not None:
            self.ledger.close()
