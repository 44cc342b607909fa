"""The ModelDeployment and Tenant resources as pydantic models: the one source of truth for the
CRDs, the operator, local mode and the serving config."""

from frugalserve.api.gpus import GPU_TYPES, GpuType
from frugalserve.api.manifests import ManifestError, Manifests, load_manifests, parse_resource
from frugalserve.api.models import (
    API_VERSION,
    BUILTIN_MODELS,
    GROUP,
    VERSION,
    Architecture,
    Condition,
    ConditionStatus,
    DType,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    OnExceeded,
    Period,
    Quantization,
    Tenant,
    TenantSpec,
    TenantState,
    TenantStatus,
)

__all__ = [
    "API_VERSION", "BUILTIN_MODELS", "GPU_TYPES", "GROUP", "VERSION", "Architecture", "Condition",
    "ConditionStatus", "DType", "GpuType", "ManifestError", "Manifests", "ModelDeployment",
    "ModelDeploymentSpec", "ModelDeploymentStatus", "OnExceeded", "Period", "Quantization",
    "Tenant", "TenantSpec", "TenantState", "TenantStatus", "load_manifests", "parse_resource",
]
