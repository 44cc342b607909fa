"""ModelDeployments reconciled by the real kopf operator against the extended emulator:
create, update, no-op, invalid specs, restarts and RayService status."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator.conftest import (
    MODELS,
    RAYSERVICES,
    Cluster,
    OperatorFactory,
    eventually,
    model,
    settle,
)

pytestmark = pytest.mark.operator


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return None


async def test_create_renders_a_schema_valid_owned_rayservice(
    cluster: Cluster, operator: OperatorFactory, rayservice_errors: Any
) -> None:
    async with operator():
        md = await cluster.create(MODELS, model("alpha"))
        rs = await eventually(lambda: cluster.get(RAYSERVICES, "alpha"))
        assert rayservice_errors(rs) == []
        assert rs["metadata"]["ownerReferences"] == [{
            "apiVersion": "frugalserve.io/v1alpha1", "kind": "ModelDeployment", "name": "alpha",
            "uid": md["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
        assert rs["metadata"]["labels"]["frugalserve.io/model-deployment"] == "alpha"
        status = (await eventually(lambda: (cluster.get(MODELS, "alpha") or {}).get("status")))
        assert status["endpoint"] == "http://alpha-serve-svc.default.svc:8000/v1"
        assert status["observedGeneration"] == 1
        assert condition(cluster.get(MODELS, "alpha"), "Valid")["status"] == "True"
        assert condition(cluster.get(MODELS, "alpha"), "Ready")["reason"] == "WaitingForServe"
        await settle(cluster)
        assert "finalizers" not in cluster.get(MODELS, "alpha")["metadata"]
        writes = cluster.operator_writes()
        assert sorted(m for m, _ in writes) == ["PATCH", "PATCH", "POST"], writes
