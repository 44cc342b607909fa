"""The GPU types frugalserve knows: memory (to check that weights fit) and a default on-demand
price per GPU-hour (overridable per ModelDeployment or by the cluster's pricing table)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuType:
    """One accelerator model as the scheduler sees it."""

    memory_gib: float
    """Device memory in GiB."""
    hour_usd: float
    """Default on-demand list price of one GPU for one hour, USD."""


# Approximate public on-demand list prices per GPU-hour of the large clouds (2025), rounded.
# They are defaults for demos and for clusters without a pricing table; platform teams override
# them with their negotiated prices (chart value `pricing.gpuHourUSD`, or spec.pricing.gpuHourUSD).
GPU_TYPES: dict[str, GpuType] = {
    "T4": GpuType(memory_gib=16, hour_usd=0.35),
    "L4": GpuType(memory_gib=24, hour_usd=0.71),
    "A10G": GpuType(memory_gib=24, hour_usd=1.01),
    "L40S": GpuType(memory_gib=48, hour_usd=1.86),
    "A100-40GB": GpuType(memory_gib=40, hour_usd=3.67),
    "A100-80GB": GpuType(memory_gib=80, hour_usd=5.07),
    "H100-80GB": GpuType(memory_gib=80, hour_usd=11.06),
    "H200-141GB": GpuType(memory_gib=141, hour_usd=13.20),
}

# The share of device memory weights may take; the rest holds the KV cache and activations.
WEIGHT_MEMORY_FRACTION = 0.9
