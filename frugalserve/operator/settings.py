"""The operator's settings: one typed object read from FRUGALSERVE_* environment variables and
`frugalserve operator` flags. Built by the CLI (or a test) and handed to `handlers.register`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from frugalserve.operator.render import RenderSettings

ENV_PREFIX = "FRUGALSERVE_"


class OperatorSettings(BaseModel):
    """Everything the operator is configured with; nothing is read or connected at import."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespaces: tuple[str, ...] = Field(
        default=(), description="Namespaces watched; empty watches the whole cluster."
    )
    ledger_url: str | None = Field(
        default=None,
        description="Ledger the operator configures tenants in and reads usage from; also "
        "written into every Serve config. Without it Tenant status is not filled.",
    )
    serving_ledger_url: str = Field(
        default="redis://frugalserve-redis:6379/0",
        description="Ledger URL the gateways use (as seen from the Ray pods).",
    )
    prometheus_url: str | None = Field(
        default=None, description="Prometheus HTTP API base URL; else gateways are scraped."
    )
    metrics_url_template: str = Field(
        default="http://{name}-serve-svc.{namespace}.svc:8000/metrics",
        description="A gateway's /metrics URL, scraped when no Prometheus URL is set.",
    )
    gpu_prices: dict[str, float] = Field(
        default_factory=dict, description="The cluster's pricing table: GPU type -> USD/hour."
    )
    image: str = Field(
        default=RenderSettings().image, description="Serving image when spec.ray.image is unset."
    )
    gateway_replicas: int = Field(default=2, ge=1, description="Gateway replicas per app.")
    cost_interval_s: float = Field(default=15.0, gt=0, description="Cost timer period.")
    cost_window_s: int = Field(default=120, ge=1, description="Trailing window of the rates.")
    tenant_interval_s: float = Field(default=5.0, gt=0, description="Tenant status timer period.")
    key_interval_s: float = Field(
        default=60.0, gt=0,
        description="How often Tenants' API key Secrets are read again (rotation, revocation).",
    )
    http_timeout_s: float = Field(default=5.0, gt=0, description="Metrics HTTP request timeout.")

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: Any) -> Any:
        return [n for n in value.split(",") if n] if isinstance(value, str) else value

    @field_validator("gpu_prices", mode="before")
    @classmethod
    def _load_prices(cls, value: Any) -> Any:
        """A JSON object, or a path to a JSON file holding one."""
        if isinstance(value, str):
            text = value if value.lstrip().startswith("{") else Path(value).read_text()
            return json.loads(text)
        return value

    def render_settings(self) -> RenderSettings:
        """The subset that shapes rendered RayServices."""
        return RenderSettings(
            image=self.image,
            ledger_url=self.serving_ledger_url,
            gpu_prices=self.gpu_prices,
            gateway_replicas=self.gateway_replicas,
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None
    ) -> OperatorSettings:
        """Settings from FRUGALSERVE_<FIELD> variables, then non-None overrides (the flags)."""
        values: dict[str, Any] = {
            name: environ[ENV_PREFIX + name.upper()]
            for name in cls.model_fields
            if ENV_PREFIX + name.upper() in environ
        }
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.model_validate(values)
