"""Static cost arithmetic shared by render, the operator and the gateway: the GPU-hour price in
force for a ModelDeployment, hourly cost of replicas, and the replica cap under a cost ceiling."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from frugalserve.api.gpus import GPU_TYPES
from frugalserve.api.models import ModelDeploymentSpec

MICROS_PER_USD = 1_000_000


def usd_to_micros(usd: float) -> int:
    """Dollars as integer micro-dollars, rounded to the nearest (money is integer everywhere)."""
    return round(usd * MICROS_PER_USD)


def gpu_hour_usd(spec: ModelDeploymentSpec, table: Mapping[str, float] | None = None) -> float:
    """The price of one GPU-hour: the spec's own, else the cluster table's, else the default."""
    if spec.pricing.gpu_hour_usd is not None:
        return spec.pricing.gpu_hour_usd
    gpu = spec.resources.gpu_type
    if gpu is None or spec.resources.gpus_per_replica == 0:
        return 0.0
    if table and gpu in table:
        return table[gpu]
    return GPU_TYPES[gpu].hour_usd


def hourly_cost_usd(replicas: int, gpus_per_replica: int, gpu_hour: float) -> float:
    """GPU cost per hour of `replicas` replicas."""
    return replicas * gpus_per_replica * gpu_hour


class CostCeilingError(ValueError):
    """A cost ceiling that pays for fewer replicas than the spec's minimum."""


@dataclass(frozen=True)
class ReplicaBounds:
    """Autoscaling bounds after the cost ceiling; `capped` says the ceiling lowered maxReplicas."""

    min_replicas: int
    max_replicas: int
    capped: bool
    affordable: int | None
    """Replicas the ceiling pays for (None without a ceiling or with free GPUs)."""


def replica_bounds(
    spec: ModelDeploymentSpec, table: Mapping[str, float] | None = None
) -> ReplicaBounds:
    """minReplicas/maxReplicas with maxReplicas lowered so GPU cost stays under maxHourlyCostUSD."""
    scaling = spec.autoscaling
    per_replica = hourly_cost_usd(1, spec.resources.gpus_per_replica, gpu_hour_usd(spec, table))
    ceiling = scaling.max_hourly_cost_usd
    if ceiling is None or per_replica == 0:
        return ReplicaBounds(scaling.min_replicas, scaling.max_replicas, False, None)
    affordable = math.floor(ceiling / per_replica + 1e-9)
    if affordable < max(scaling.min_replicas, 1):
        raise CostCeilingError(
            f"spec.autoscaling.maxHourlyCostUSD: {ceiling:g} USD/h pays for {affordable} "
            f"replica(s) at {per_replica:g} USD/h each, fewer than "
            f"max(minReplicas, 1) = {max(scaling.min_replicas, 1)}"
        )
    capped = affordable < scaling.max_replicas
    return ReplicaBounds(
        scaling.min_replicas, min(scaling.max_replicas, affordable), capped, affordable
    )
