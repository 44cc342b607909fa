"""Pydantic models of the ModelDeployment and Tenant resources (group frugalserve.io, v1alpha1).

They are the one source of truth: the CRDs in crds/ are generated from them, the operator and
local mode parse manifests with them, and their validation errors name the field a user wrote.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

from frugalserve.api.gpus import GPU_TYPES, WEIGHT_MEMORY_FRACTION

GROUP = "frugalserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Models shipped with the package (built from presets with seeded weights): name -> architecture.
BUILTIN_MODELS: dict[str, str] = {"tiny-dense": "dense", "tiny-moe": "moe"}
SOURCE_SCHEMES = ("hf://", "s3://", "pvc://", "file://", "builtin://")
DNS_1123_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def camel_alias(name: str) -> str:
    """snake_case -> the camelCase of Kubernetes manifests, with USD kept upper-case."""
    return to_camel(name).replace("Usd", "USD")


class Spec(BaseModel):
    """Base of every spec model: camelCase in manifests, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=camel_alias, populate_by_name=True, extra="forbid", use_enum_values=False
    )


class Architecture(StrEnum):
    DENSE = "dense"
    MOE = "moe"


class DType(StrEnum):
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class Quantization(StrEnum):
    NONE = "none"
    INT8 = "int8"
    INT4 = "int4"


BYTES_PER_PARAM = {"bfloat16": 2.0, "float16": 2.0, "float32": 4.0}
# int4 group-wise: half a byte per weight plus a scale and zero point per group of 32.
QUANTIZED_BYTES_PER_PARAM = {"int8": 1.0, "int4": 0.5 + 4 / 32}


class ModelSource(Spec):
    """Where the weights come from and what they are."""

    source: str = Field(
        description="Checkpoint location: hf://org/name, s3://bucket/path, pvc://claim/path, "
        "file:///path, or builtin://NAME for the small models shipped with frugalserve.",
        min_length=1,
        max_length=512,
    )
    revision: str | None = Field(
        default=None, description="Revision (branch, tag or commit) for hf:// sources.",
        max_length=128,
    )
    architecture: Architecture | None = Field(
        default=None,
        description="dense or moe; detected from the checkpoint's config.json when omitted.",
    )
    max_context_tokens: int | None = Field(
        default=None, ge=16, le=1_048_576,
        description="Longest prompt plus completion a request may use; the checkpoint's "
        "max_position_embeddings when omitted.",
    )
    parameters_billions: float | None = Field(
        default=None, ge=0, le=10_000,
        description="Parameter count in billions, used to check that the weights fit the GPU "
        "memory; known for builtin:// models, skipped when omitted.",
    )

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(SOURCE_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(SOURCE_SCHEMES)}; got {value!r}")
        scheme, _, rest = value.partition("://")
        if not rest.strip("/"):
            raise ValueError(f"{scheme}:// needs a path after it; got {value!r}")
        if scheme == "builtin" and rest not in BUILTIN_MODELS:
            raise ValueError(f"unknown builtin model {rest!r}; known: {', '.join(BUILTIN_MODELS)}")
        if scheme == "hf" and not re.fullmatch(r"[\w.-]+/[\w.-]+", rest):
            raise ValueError(f"hf:// sources are hf://org/name; got {value!r}")
        return value


class Precision(Spec):
    """Numeric format of the weights in GPU memory."""

    dtype: DType = Field(default=DType.BFLOAT16, description="Activation and weight dtype.")
    quantization: Quantization = Field(
        default=Quantization.NONE,
        description="Weight-only quantization: none, int8 (per channel) or int4 (group-wise).",
    )

    def bytes_per_param(self) -> float:
        if self.quantization is Quantization.NONE:
            return BYTES_PER_PARAM[self.dtype.value]
        return QUANTIZED_BYTES_PER_PARAM[self.quantization.value]


class Toleration(Spec):
    """A Kubernetes toleration for the GPU worker pods."""

    key: str | None = Field(default=None, description="Taint key to tolerate.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal."
    )
    value: str | None = Field(default=None, description="Taint value (with Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; all when omitted."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="How long a NoExecute taint is tolerated."
    )


QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"


class Resources(Spec):
    """What one model replica needs from the cluster."""

    gpus_per_replica: int = Field(
        default=1, ge=0, le=16, description="GPUs per model replica (0 runs on CPU)."
    )
    gpu_type: str | None = Field(
        default="L4",
        description=f"Accelerator model, one of {', '.join(GPU_TYPES)}; required with GPUs.",
    )
    cpu: str = Field(default="4", pattern=QUANTITY, description="CPU request of a worker pod.")
    memory: str = Field(default="16Gi", pattern=QUANTITY, description="Memory of a worker pod.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the GPU worker pods must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations of the GPU worker pods."
    )

    @field_validator("gpu_type")
    @classmethod
    def _known_gpu(cls, value: str | None) -> str | None:
        if value is not None and value not in GPU_TYPES:
            raise ValueError(f"unknown GPU type {value!r}; known: {', '.join(GPU_TYPES)}")
        return value

    @model_validator(mode="after")
    def _gpu_type_with_gpus(self) -> Resources:
        if self.gpus_per_replica > 0 and self.gpu_type is None:
            raise ValueError("gpuType is required when gpusPerReplica > 0")
        return self


class Autoscaling(Spec):
    """Replica bounds and the Ray Serve autoscaler's targets."""

    min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest replicas (0 allowed).")
    max_replicas: int = Field(default=1, ge=1, le=1000, description="Most replicas.")
    target_ongoing_requests: int = Field(
        default=8, ge=1, le=10_000, description="Requests per replica the autoscaler aims for."
    )
    upscale_delay_seconds: int = Field(
        default=30, ge=0, le=86_400, description="How long load must stay high before scaling up."
    )
    downscale_delay_seconds: int = Field(
        default=300, ge=0, le=86_400, description="How long load must stay low before scaling down."
    )
    max_hourly_cost_usd: float | None = Field(
        default=None, ge=0,
        description="Ceiling on the deployment's GPU cost per hour; replicas are capped under it.",
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) must be <= maxReplicas ({self.max_replicas})"
            )
        return self


class Pricing(Spec):
    """What GPU time costs and, optionally, what tenants are charged."""

    gpu_hour_usd: float | None = Field(
        default=None, ge=0, le=10_000,
        description="Price of one GPU-hour; the cluster table's price for gpuType if unset.",
    )
    input_per_million_usd: float | None = Field(
        default=None, ge=0, le=100_000, description="List price per 1M prompt tokens."
    )
    output_per_million_usd: float | None = Field(
        default=None, ge=0, le=100_000, description="List price per 1M completion tokens."
    )

    @model_validator(mode="after")
    def _both_list_prices(self) -> Pricing:
        if (self.input_per_million_usd is None) != (self.output_per_million_usd is None):
            raise ValueError("set both inputPerMillionUSD and outputPerMillionUSD, or neither")
        return self


class UpgradeStrategy(StrEnum):
    NEW_CLUSTER = "NewCluster"
    NONE = "None"


class RaySpec(Spec):
    """The Ray cluster KubeRay runs for this deployment."""

    image: str | None = Field(
        default=None, max_length=512,
        description="Serving image (Ray with frugalserve); the operator's default if unset.",
    )
    ray_version: str = Field(
        default="2.60.0", pattern=r"^\d+\.\d+\.\d+$", description="Ray version of the image."
    )
    head_cpu: str = Field(default="2", pattern=QUANTITY, description="CPU of the head pod.")
    head_memory: str = Field(default="8Gi", pattern=QUANTITY, description="Memory of the head pod.")
    upgrade_strategy: UpgradeStrategy = Field(
        default=UpgradeStrategy.NEW_CLUSTER,
        description="NewCluster: zero-downtime upgrade on cluster changes; None: in place.",
    )


class EngineSpec(Spec):
    """How the inference engine batches requests."""

    max_batch_size: int = Field(
        default=16, ge=1, le=512, description="Requests decoded together per replica."
    )


class ModelDeploymentSpec(Spec):
    """What a user asks for: a model, its precision, resources, scaling, prices and fallback."""

    model: ModelSource = Field(description="The checkpoint to serve.")
    precision: Precision = Field(default_factory=Precision, description="Weight format.")
    resources: Resources = Field(default_factory=Resources, description="Per-replica resources.")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="Replica scaling.")
    pricing: Pricing = Field(default_factory=Pricing, description="GPU price and list prices.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="Engine batching.")
    fallback: str | None = Field(
        default=None, pattern=DNS_1123_NAME, max_length=63,
        description="A cheaper ModelDeployment (same namespace) for downgraded tenants.",
    )
    ray: RaySpec = Field(default_factory=RaySpec, description="Ray cluster settings.")

    @model_validator(mode="after")
    def _weights_fit(self) -> ModelDeploymentSpec:
        gpu, params = self.resources.gpu_type, self.model.parameters_billions
        if gpu is None or params is None or self.resources.gpus_per_replica == 0:
            return self
        weights_gib = params * 1e9 * self.precision.bytes_per_param() / 2**30
        usable_gib = GPU_TYPES[gpu].memory_gib * self.resources.gpus_per_replica
        if weights_gib > usable_gib * WEIGHT_MEMORY_FRACTION:
            raise ValueError(
                f"precision: {params:g}B parameters at {self.precision.bytes_per_param():g} "
                f"bytes each need {weights_gib:.1f} GiB of weights, more than "
                f"{WEIGHT_MEMORY_FRACTION:.0%} of {self.resources.gpus_per_replica} x {gpu} "
                f"({usable_gib:g} GiB): quantize, or raise resources.gpusPerReplica"
            )
        return self


class Observed(BaseModel):
    """Base of status models: written by the operator, read leniently (unknown keys ignored)."""

    model_config = ConfigDict(alias_generator=camel_alias, populate_by_name=True, extra="ignore")


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(Observed):
    """A Kubernetes-style status condition."""

    type: str = Field(description="Ready, Progressing, Degraded, Valid or CostCapped.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str | None = Field(default=None, description="RFC 3339 time.")
    observed_generation: int | None = Field(default=None, description="Generation it reflects.")


class ReplicaStatus(Observed):
    desired: int = Field(default=0, description="Replicas the autoscaler wants.")
    ready: int = Field(default=0, description="Replicas serving.")


class ModelDeploymentStatus(Observed):
    """What the operator observed; written by the operator only."""

    conditions: list[Condition] = Field(default_factory=list, description="Conditions.")
    observed_generation: int | None = Field(default=None, description="Last reconciled generation.")
    replicas: ReplicaStatus | None = Field(default=None, description="Replica counts.")
    endpoint: str | None = Field(default=None, description="OpenAI-compatible base URL.")
    live_cost_per_million_tokens_usd: float | None = Field(
        default=None, description="Live GPU cost per 1M tokens over the trailing window."
    )
    tokens_per_second: float | None = Field(default=None, description="Tokens served per second.")
    hourly_cost_usd: float | None = Field(default=None, description="GPU cost per hour now.")
    ray_service: str | None = Field(default=None, description="Name of the owned RayService.")


class ObjectMeta(BaseModel):
    """The parts of Kubernetes metadata frugalserve reads; the rest passes through."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=camel_alias)

    name: str = Field(pattern=DNS_1123_NAME, max_length=63, description="Object name.")
    namespace: str = Field(default="default", pattern=DNS_1123_NAME, max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None


class ModelDeployment(BaseModel):
    """A model served on Ray Serve with cost-capped autoscaling (kind ModelDeployment, md)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["frugalserve.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ModelDeployment"]
    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None


class Period(StrEnum):
    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    NEVER = "never"


class OnExceeded(StrEnum):
    REJECT = "reject"
    DOWNGRADE = "downgrade"


class SecretKeyRef(Spec):
    """A key in a Secret of the Tenant's namespace."""

    name: str = Field(pattern=DNS_1123_NAME, max_length=253, description="Secret name.")
    key: str = Field(
        default="api-key", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="Data key."
    )


class Budget(Spec):
    """A spending limit per period, in dollars and/or tokens."""

    limit_usd: float | None = Field(
        default=None, ge=0, le=1e9, description="Dollar budget per period."
    )
    limit_tokens: int | None = Field(
        default=None, ge=0, le=10**15, description="Token budget (prompt + completion) per period."
    )
    period: Period = Field(default=Period.MONTHLY, description="When the budget resets (UTC).")
    on_exceeded: OnExceeded = Field(
        default=OnExceeded.REJECT,
        description="reject: HTTP 429; downgrade: serve from the model's fallback.",
    )


class RateLimit(Spec):
    """Per-tenant request and token rates."""

    requests_per_minute: int | None = Field(
        default=None, ge=1, le=10**9, description="Requests/min."
    )
    tokens_per_minute: int | None = Field(default=None, ge=1, le=10**12, description="Tokens/min.")


class TenantSpec(Spec):
    """Who may call which models, and how much they may spend."""

    api_key_secret_ref: SecretKeyRef = Field(description="Secret holding the tenant's API key.")
    models: list[str] = Field(
        default_factory=lambda: ["*"], min_length=1, max_length=256,
        description="ModelDeployments this tenant may use; '*' for all.",
    )
    budget: Budget = Field(default_factory=Budget, description="Budget; unlimited when empty.")
    rate_limit: RateLimit = Field(default_factory=RateLimit, description="Rate limits.")
    priority: int = Field(default=100, ge=0, le=1000, description="Higher is served first.")

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: list[str]) -> list[str]:
        for i, name in enumerate(value):
            if name != "*" and not re.fullmatch(DNS_1123_NAME, name):
                raise ValueError(f"models[{i}]: {name!r} is not a ModelDeployment name or '*'")
        return value


class TenantState(StrEnum):
    ACTIVE = "Active"
    DOWNGRADED = "Downgraded"
    EXHAUSTED = "Exhausted"


class TokensUsed(Observed):
    prompt: int = Field(default=0, description="Prompt tokens this period.")
    completion: int = Field(default=0, description="Completion tokens this period.")


class TenantStatus(Observed):
    """The ledger's view of the tenant, copied by the operator every few seconds."""

    spent_usd: float | None = Field(default=None, description="Spent this period, USD.")
    tokens_used: TokensUsed | None = Field(default=None, description="Tokens this period.")
    remaining_usd: float | None = Field(default=None, description="Budget left, USD.")
    period_start: str | None = Field(default=None, description="Start of the period (RFC 3339).")
    state: TenantState | None = Field(default=None, description="Active, Downgraded or Exhausted.")
    conditions: list[Condition] = Field(default_factory=list, description="Conditions.")


class Tenant(BaseModel):
    """A consumer of models with an API key and a budget (kind Tenant, tn)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["frugalserve.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["Tenant"]
    metadata: ObjectMeta
    spec: TenantSpec
    status: TenantStatus | None = None


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the manifest path a user reads: spec.resources.gpuType."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.startswith(("function-", "tagged-union")) or item in {"str", "int", "float"}:
            continue
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts)


def describe_errors(errors: list[ErrorDetails]) -> list[str]:
    """Readable `path: message` lines from a pydantic ValidationError's errors(by_alias)."""
    return [
        f"{field_path(tuple(e['loc'])) or '<root>'}: {e['msg'].removeprefix('Value error, ')}"
        for e in errors
    ]
