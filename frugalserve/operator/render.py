"""Pure translation of a validated ModelDeployment into the KubeRay RayService that serves it.

No I/O and no clock: the same inputs give the same object, byte for byte once dumped with sorted
keys, so the operator can compare renders to decide whether to write. Called by the operator's
handlers and by `frugalserve render`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from frugalserve.api.crds import to_yaml
from frugalserve.api.models import API_VERSION, ModelDeployment
from frugalserve.serving.config import (
    SERVE_ENV,
    AppConfig,
    AutoscalingConfig,
    TenantConfig,
    app_config,
    gateway_user_config,
    serve_application,
)

MANAGED_BY = "frugalserve"
MODEL_LABEL = "frugalserve.io/model-deployment"
SERVE_PORT = 8000


class RenderSettings(BaseModel):
    """Cluster-wide settings that shape every rendered RayService."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(
        default="ghcr.io/frugalserve/frugalserve-ray:0.1.0",
        description="Serving image (Ray with frugalserve installed) when spec.ray.image is unset.",
    )
    ledger_url: str = Field(
        default="redis://frugalserve-redis:6379/0", description="Ledger the gateways share."
    )
    gpu_prices: dict[str, float] = Field(
        default_factory=dict, description="The cluster's pricing table: GPU type -> USD/hour."
    )
    gateway_replicas: int = Field(default=2, ge=1, description="Gateway replicas per app.")


class FallbackError(ValueError):
    """A fallback chain that names a missing ModelDeployment or loops."""


def fallback_chain(
    md: ModelDeployment, by_name: Mapping[str, ModelDeployment]
) -> list[ModelDeployment]:
    """The ModelDeployments reached by following `spec.fallback` from md (md excluded)."""
    chain: list[ModelDeployment] = []
    seen = {md.metadata.name}
    current = md
    while current.spec.fallback is not None:
        name = current.spec.fallback
        if name in seen:
            raise FallbackError(f"spec.fallback: {name!r} loops back into the chain {sorted(seen)}")
        if name not in by_name:
            raise FallbackError(f"spec.fallback: ModelDeployment {name!r} does not exist")
        current = by_name[name]
        seen.add(name)
        chain.append(current)
    return chain


def tenants_for(
    models: Sequence[ModelDeployment], tenants: Sequence[TenantConfig]
) -> list[TenantConfig]:
    """The tenants allowed at least one of the app's models (its gateway must know them)."""
    names = {md.metadata.name for md in models}
    return [t for t in tenants if "*" in t.models or names.intersection(t.models)]


def labels(md: ModelDeployment) -> dict[str, str]:
    """Labels of every object rendered for md; the operator watches RayServices by them."""
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/name": "frugalserve",
        MODEL_LABEL: md.metadata.name,
    }


def owner_reference(md: ModelDeployment) -> dict[str, Any]:
    """Makes the RayService garbage-collected with its ModelDeployment."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "name": md.metadata.name,
        "uid": md.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def serve_config_v2(
    app: AppConfig,
    models: Sequence[ModelDeployment],
    settings: RenderSettings,
    tenants: Sequence[TenantConfig],
) -> str:
    """The Serve config (YAML text) KubeRay deploys: the app's models and one gateway."""
    user_config = gateway_user_config(
        list(models), tenants_for(models, tenants), settings.gpu_prices
    )
    return to_yaml({"applications": [serve_application(app, user_config)]})


def _container(
    name: str, image: str, resources: dict[str, Any], ports: Sequence[tuple[str, int]] = ()
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name, "image": image, "resources": resources,
        "env": [{"name": key, "value": value} for key, value in sorted(SERVE_ENV.items())],
    }
    if ports:
        container["ports"] = [{"name": name_, "containerPort": port} for name_, port in ports]
    return container


def _head_group(md: ModelDeployment, image: str) -> dict[str, Any]:
    ray = md.spec.ray
    size = {"cpu": ray.head_cpu, "memory": ray.head_memory}
    return {
        # The head runs the gateway and the Serve controller, never a model: no GPUs.
        "rayStartParams": {"num-gpus": "0", "dashboard-host": "0.0.0.0"},
        "template": {
            "metadata": {"labels": labels(md)},
            "spec": {
                "containers": [
                    _container(
                        "ray-head", image, {"requests": size, "limits": size},
                        [("gcs", 6379), ("dashboard", 8265), ("client", 10001),
                         ("serve", SERVE_PORT)],
                    )
                ]
            },
        },
    }


def _worker_group(
    owner: ModelDeployment, md: ModelDeployment, image: str, scaling: AutoscalingConfig
) -> dict[str, Any]:
    """The worker pods of one model of the app (owner's own model or one of its fallbacks),
    within the same cost-capped bounds as the model's Serve autoscaling."""
    spec = md.spec
    size: dict[str, Any] = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    limits = dict(size)
    if spec.resources.gpus_per_replica:
        limits["nvidia.com/gpu"] = spec.resources.gpus_per_replica
    pod_spec: dict[str, Any] = {
        "containers": [_container("ray-worker", image, {"requests": size, "limits": limits})]
    }
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(spec.resources.node_selector.items()))
    if spec.resources.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in spec.resources.tolerations
        ]
    # One worker pod per model replica: the group scales within the cost-capped bounds.
    return {
        "groupName": md.metadata.name,
        "replicas": scaling.min_replicas,
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "rayStartParams": {},
        "template": {"metadata": {"labels": labels(owner)}, "spec": pod_spec},
    }


def render(
    md: ModelDeployment,
    settings: RenderSettings,
    fallbacks: Sequence[ModelDeployment] = (),
    tenants: Sequence[TenantConfig] = (),
) -> dict[str, Any]:
    """The RayService for md. Raises CostCeilingError when the ceiling pays for no replica."""
    image = md.spec.ray.image or settings.image
    models = [md, *fallbacks]
    app = app_config(models, settings.ledger_url, settings.gpu_prices, settings.gateway_replicas)
    scaling = {model.name: model.autoscaling for model in app.models}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": md.metadata.name,
            "namespace": md.metadata.namespace,
            "labels": labels(md),
            "ownerReferences": [owner_reference(md)],
        },
        "spec": {
            "serveConfigV2": serve_config_v2(app, models, settings, tenants),
            "upgradeStrategy": {"type": md.spec.ray.upgrade_strategy.value},
            "rayClusterConfig": {
                "rayVersion": md.spec.ray.ray_version,
                "enableInTreeAutoscaling": True,
                "headGroupSpec": _head_group(md, image),
                "workerGroupSpecs": [
                    _worker_group(md, model, image, scaling[model.metadata.name])
                    for model in models
                ],
            },
        },
    }
