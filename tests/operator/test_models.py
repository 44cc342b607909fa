"""ModelDeployments reconciled by the real kopf operator against the extended emulator:
create, update, no-op, invalid specs, restarts and RayService status."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.operator.conftest import (
    EVENTS,
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


async def test_spec_change_patches_the_rayservice_and_observes_the_generation(
    cluster: Cluster, operator: OperatorFactory, rayservice_errors: Any
) -> None:
    async with operator():
        await cluster.create(MODELS, model("alpha"))
        first = await eventually(lambda: cluster.get(RAYSERVICES, "alpha"))
        await settle(cluster)
        await cluster.patch(MODELS, "default", "alpha",
                            {"spec": {"autoscaling": {"maxReplicas": 3}}})
        assert cluster.get(MODELS, "alpha")["metadata"]["generation"] == 2
        await eventually(lambda: (cluster.get(MODELS, "alpha")["status"]
                                  .get("observedGeneration") == 2))
        rs = cluster.get(RAYSERVICES, "alpha")
        assert rs["metadata"]["uid"] == first["metadata"]["uid"]  # patched, not recreated
        assert rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] == 3
        assert rayservice_errors(rs) == []


async def test_unchanged_objects_and_a_restart_cause_zero_writes(
    cluster: Cluster, operator: OperatorFactory
) -> None:
    async with operator():
        for name in ("alpha", "beta"):
            await cluster.create(MODELS, model(name))
        await eventually(lambda: len(cluster.all(RAYSERVICES)) == 2)
        await settle(cluster)
        before = cluster.operator_writes()
        # A metadata-only change kopf sees as an update: the render is the same.
        await cluster.patch(MODELS, "default", "alpha", {"metadata": {"labels": {"team": "a"}}})
        await settle(cluster)
        rayservice_writes = [w for w in cluster.operator_writes()[len(before):]
                             if "rayservices" in w[1]]
        assert rayservice_writes == []
    settled = cluster.operator_writes()
    async with operator():  # restart: resume handlers see everything again
        await asyncio.sleep(1.5)
        await settle(cluster)
    assert cluster.operator_writes() == settled
    assert sorted(rs["metadata"]["name"] for rs in cluster.all(RAYSERVICES)) == ["alpha", "beta"]


async def test_invalid_spec_gets_a_condition_and_event_and_others_still_reconcile(
    cluster: Cluster, operator: OperatorFactory
) -> None:
    async with operator():
        bad = model("broken", resources={"gpusPerReplica": 1, "gpuType": "Z80"})
        await cluster.create(MODELS, bad)
        valid = await eventually(lambda: condition(cluster.get(MODELS, "broken"), "Valid"))
        assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
        assert valid["message"].startswith("spec.resources.gpuType: unknown GPU type 'Z80'")
        events = await eventually(lambda: [e for e in cluster.all(EVENTS)
                                           if e["involvedObject"]["name"] == "broken"])
        assert events[0]["type"] == "Warning" and events[0]["reason"] == "InvalidSpec"
        assert "spec.resources.gpuType" in events[0]["message"]
        await cluster.create(MODELS, model("after"))
        await eventually(lambda: cluster.get(RAYSERVICES, "after"))
        assert cluster.get(RAYSERVICES, "broken") is None
        # Fixing the spec heals it.
        await cluster.patch(MODELS, "default", "broken",
                            {"spec": {"resources": {"gpuType": "L4"}}})
        await eventually(lambda: cluster.get(RAYSERVICES, "broken"))
        await eventually(lambda: condition(cluster.get(MODELS, "broken"), "Valid")["status"]
                         == "True")


async def test_rayservice_status_flows_into_the_model_status(
    cluster: Cluster, operator: OperatorFactory
) -> None:
    async with operator():
        await cluster.create(MODELS, model("alpha"))
        await eventually(lambda: cluster.get(RAYSERVICES, "alpha"))
        await settle(cluster)
        await cluster.patch(RAYSERVICES, "default", "alpha", {"status": {
            "serviceStatus": "Running",
            "conditions": [{"type": "Ready", "status": "True", "reason": "x", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "activeServiceStatus": {
                "applicationStatuses": {"frugalserve": {"status": "RUNNING"}},
                "rayClusterStatus": {"desiredWorkerReplicas": 2, "readyWorkerReplicas": 2}}}},
            sub="status")
        ready = await eventually(lambda: (condition(cluster.get(MODELS, "alpha"), "Ready") or {})
                                 .get("status") == "True")
        assert ready
        md = cluster.get(MODELS, "alpha")
        assert md["status"]["replicas"] == {"desired": 2, "ready": 2}
        assert condition(md, "Degraded")["status"] == "False"
        await cluster.patch(RAYSERVICES, "default", "alpha", {"status": {
            "activeServiceStatus": {"applicationStatuses": {"frugalserve": {
                "status": "DEPLOY_FAILED", "message": "import error"}}}}}, sub="status")
        degraded = await eventually(lambda: (condition(cluster.get(MODELS, "alpha"), "Degraded")
                                             or {}).get("status") == "True")
        assert degraded
        assert "DEPLOY_FAILED import error" in condition(cluster.get(MODELS, "alpha"),
                                                         "Degraded")["message"]


async def test_cost_ceiling_caps_replicas_and_says_so(
    cluster: Cluster, operator: OperatorFactory, rayservice_errors: Any
) -> None:
    async with operator():
        await cluster.create(MODELS, model(
            "capped", resources={"gpusPerReplica": 1, "gpuType": "L4"},
            pricing={"gpuHourUSD": 1.0}, autoscaling={"maxReplicas": 8, "maxHourlyCostUSD": 3}))
        rs = await eventually(lambda: cluster.get(RAYSERVICES, "capped"))
        assert rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] == 3
        assert rayservice_errors(rs) == []
        capped = await eventually(lambda: condition(cluster.get(MODELS, "capped"), "CostCapped"))
        assert capped["status"] == "True" and "3 replica" in capped["message"]
