"""The typed config of the frugalserve Serve application, and its translation from the API
resources. The operator writes it into a RayService's serveConfigV2 and local mode deploys it
directly, so both run the same application with the same arguments.

Two parts: `AppConfig` (application args: models and the ledger; a change redeploys) and
`GatewayUserConfig` (tenants and prices: the gateway's `user_config`, applied in place).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from frugalserve.api.models import (
    DNS_1123_NAME,
    ModelDeployment,
    OnExceeded,
    Period,
    Quantization,
    Tenant,
)
from frugalserve.ledger import Period as LedgerPeriod
from frugalserve.ledger import TenantLimits
from frugalserve.pricing.cost import ReplicaBounds, gpu_hour_usd, replica_bounds, usd_to_micros

SERVE_ENV = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}
"""Ray Serve's own request-path settings for every Ray process (the proxy, the controller, the
replicas): local mode starts its Ray with them, and the operator puts them into the Ray
containers of every RayService. gRPC between handles and replicas, and user code and handle
routers on each process's main event loop instead of a thread each: part of Ray 2.60's
`RAY_SERVE_THROUGHPUT_OPTIMIZED` set, without its direct ingress (which needs HAProxy); they
cut a completion's latency through the gateway by about a third (docs/benchmarks.md). Our
replicas block no event loop: engines step in their own thread, the ledger runs in threads.
HAProxy ingress (`RAY_SERVE_ENABLE_HA_PROXY`) was measured and left off: it saves ~5 ms a
request, but a non-streaming client hanging up no longer reliably reaches the gateway, so it
would be charged the whole completion (docs/benchmarks.md)."""

APP_IMPORT_PATH = "frugalserve.serving.app:build_app"
GATEWAY_DEPLOYMENT = "Gateway"
GATEWAY_CPUS = 0.25
"""Logical CPUs of one gateway replica (it only routes and admits; the models do the work)."""


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingConfig(Config):
    """Ray Serve's autoscaling_config, field for field."""

    min_replicas: int = Field(ge=0, description="Fewest replicas.")
    max_replicas: int = Field(ge=1, description="Most replicas, already capped by cost.")
    target_ongoing_requests: float = Field(gt=0, description="Requests per replica aimed for.")
    upscale_delay_s: float = Field(ge=0, description="Seconds of high load before scaling up.")
    downscale_delay_s: float = Field(ge=0, description="Seconds of low load before scaling down.")
    look_back_period_s: float = Field(default=30.0, gt=0, description="Load averaging window.")


class PriceConfig(Config):
    """What a model's tokens cost to serve and what tenants pay for them."""

    gpu_hour_usd: float = Field(ge=0, description="Price of one GPU-hour.")
    gpus_per_replica: int = Field(ge=0, description="GPUs per model replica.")
    input_per_million_usd: float | None = Field(default=None, ge=0, description="List price in.")
    output_per_million_usd: float | None = Field(default=None, ge=0, description="List price out.")

    @property
    def version(self) -> str:
        """A short stable hash of the prices, recorded with every settlement."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


class ModelConfig(Config):
    """One model deployment of the application."""

    name: str = Field(pattern=DNS_1123_NAME, description="The ModelDeployment's name.")
    source: str = Field(description="Checkpoint URI (see ModelSource.source).")
    revision: str | None = Field(default=None, description="Revision for hf:// sources.")
    dtype: str = Field(description="bfloat16, float16 or float32.")
    quantization: Quantization = Field(description="none, int8 or int4.")
    max_context_tokens: int | None = Field(default=None, description="Context limit.")
    max_batch_size: int = Field(ge=1, description="Requests decoded together per replica.")
    fallback: str | None = Field(default=None, description="Model for downgraded tenants.")
    num_gpus: float = Field(ge=0, description="ray_actor_options.num_gpus per replica.")
    num_cpus: float = Field(default=1.0, ge=0, description="ray_actor_options.num_cpus.")
    autoscaling: AutoscalingConfig = Field(description="Replica autoscaling.")


class TenantConfig(Config):
    """A tenant as the gateway sees it: the key only as its SHA-256."""

    name: str = Field(
        min_length=1, max_length=253,
        description="namespace/name: the tenant's ledger key (see `ledger_tenant`).",
    )
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the API key.")
    models: tuple[str, ...] = Field(default=("*",), description="Allowed models, '*' for all.")
    limit_micros: int | None = Field(default=None, ge=0, description="Budget, micro-USD.")
    limit_tokens: int | None = Field(default=None, ge=0, description="Budget, tokens.")
    period: Period = Field(default=Period.MONTHLY, description="Budget period.")
    on_exceeded: OnExceeded = Field(default=OnExceeded.REJECT, description="reject | downgrade.")
    requests_per_minute: int | None = Field(default=None, ge=1, description="Rate limit.")
    tokens_per_minute: int | None = Field(default=None, ge=1, description="Rate limit.")
    priority: int = Field(default=100, ge=0, description="Higher is served first.")


class GatewayUserConfig(Config):
    """The gateway's user_config: changes reach running replicas without a restart."""

    tenants: tuple[TenantConfig, ...] = Field(default=(), description="Sorted by name.")
    prices: dict[str, PriceConfig] = Field(default_factory=dict, description="Model -> prices.")


class AppConfig(Config):
    """Arguments of the application builder `build_app`."""

    models: tuple[ModelConfig, ...] = Field(min_length=1, description="Models, sorted by name.")
    ledger_url: str = Field(description="sqlite:///path or redis://host:port/db.")
    gateway_replicas: int = Field(default=1, ge=1, description="Gateway replicas.")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Larger bodies get 413.")


def hash_key(api_key: str) -> str:
    """The SHA-256 hex digest of an API key: the only form of a key that leaves its Secret."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def model_config(md: ModelDeployment, bounds: ReplicaBounds) -> ModelConfig:
    """The application's view of one ModelDeployment, with cost-capped replica bounds."""
    spec = md.spec
    scaling = spec.autoscaling
    return ModelConfig(
        name=md.metadata.name,
        source=spec.model.source,
        revision=spec.model.revision,
        dtype=spec.precision.dtype.value,
        quantization=spec.precision.quantization,
        max_context_tokens=spec.model.max_context_tokens,
        max_batch_size=spec.engine.max_batch_size,
        fallback=spec.fallback,
        num_gpus=spec.resources.gpus_per_replica,
        autoscaling=AutoscalingConfig(
            min_replicas=bounds.min_replicas,
            max_replicas=bounds.max_replicas,
            target_ongoing_requests=scaling.target_ongoing_requests,
            upscale_delay_s=scaling.upscale_delay_seconds,
            downscale_delay_s=scaling.downscale_delay_seconds,
        ),
    )


def price_config(md: ModelDeployment, table: Mapping[str, float] | None = None) -> PriceConfig:
    """The prices in force for one ModelDeployment."""
    pricing = md.spec.pricing
    return PriceConfig(
        gpu_hour_usd=gpu_hour_usd(md.spec, table),
        gpus_per_replica=md.spec.resources.gpus_per_replica,
        input_per_million_usd=pricing.input_per_million_usd,
        output_per_million_usd=pricing.output_per_million_usd,
    )


def ledger_tenant(namespace: str, name: str) -> str:
    """The ledger's key of a Tenant: `namespace/name`. The ledger is shared cluster-wide, so
    Tenants of the same name in two namespaces must not share a budget."""
    return f"{namespace}/{name}"


def tenant_config(tenant: Tenant, key_sha256: str) -> TenantConfig:
    """The gateway's view of one Tenant, given the SHA-256 of its key; its `name` is the
    tenant's ledger key."""
    spec = tenant.spec
    budget = spec.budget
    return TenantConfig(
        name=ledger_tenant(tenant.metadata.namespace, tenant.metadata.name),
        key_sha256=key_sha256,
        models=tuple(sorted(spec.models)),
        limit_micros=None if budget.limit_usd is None else usd_to_micros(budget.limit_usd),
        limit_tokens=budget.limit_tokens,
        period=budget.period,
        on_exceeded=budget.on_exceeded,
        requests_per_minute=spec.rate_limit.requests_per_minute,
        tokens_per_minute=spec.rate_limit.tokens_per_minute,
        priority=spec.priority,
    )


def ledger_limits(tenant: TenantConfig) -> TenantLimits:
    """The ledger's limits for a tenant's budget and rate limits (the gateway and the operator
    both configure the ledger with these)."""
    return TenantLimits(
        limit_micros=tenant.limit_micros,
        limit_tokens=tenant.limit_tokens,
        period=LedgerPeriod(tenant.period.value),
        requests_per_minute=tenant.requests_per_minute,
        tokens_per_minute=tenant.tokens_per_minute,
    )


def app_config(
    models: list[ModelDeployment],
    ledger_url: str,
    table: Mapping[str, float] | None = None,
    gateway_replicas: int = 1,
) -> AppConfig:
    """The application args for a set of ModelDeployments (sorted by name, deterministic)."""
    ordered = sorted(models, key=lambda md: md.metadata.name)
    return AppConfig(
        models=tuple(model_config(md, replica_bounds(md.spec, table)) for md in ordered),
        ledger_url=ledger_url,
        gateway_replicas=gateway_replicas,
    )


def gateway_user_config(
    models: list[ModelDeployment],
    tenants: list[TenantConfig],
    table: Mapping[str, float] | None = None,
) -> GatewayUserConfig:
    """Tenants (sorted by name) and per-model prices for the gateway's user_config."""
    return GatewayUserConfig(
        tenants=tuple(sorted(tenants, key=lambda t: t.name)),
        prices={md.metadata.name: price_config(md, table) for md in models},
    )


def model_deployment_name(model: str) -> str:
    """The Serve deployment name of a model."""
    return f"Model-{model}"


def serve_application(
    app: AppConfig, user_config: GatewayUserConfig, name: str = "frugalserve"
) -> dict[str, Any]:
    """One entry of a Serve config's `applications` (the shape of serveConfigV2 and `serve
    deploy`): the builder's args, and per-deployment overrides Serve applies in place."""
    deployments: list[dict[str, Any]] = [
        {
            "name": GATEWAY_DEPLOYMENT,
            "num_replicas": app.gateway_replicas,
            "user_config": user_config.model_dump(mode="json", exclude_none=True),
        }
    ]
    for model in app.models:
        deployments.append(
            {
                "name": model_deployment_name(model.name),
                "autoscaling_config": model.autoscaling.model_dump(mode="json"),
                "ray_actor_options": {"num_cpus": model.num_cpus, "num_gpus": model.num_gpus},
            }
        )
    return {
        "name": name,
        "route_prefix": "/",
        "import_path": APP_IMPORT_PATH,
        "args": app.model_dump(mode="json", exclude_none=True),
        "deployments": deployments,
    }

