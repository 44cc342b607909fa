"""The RBAC the operator needs, proven by use: one run through every flow records exactly the
(apiGroup, resource, verb) set committed in tests/fixtures/operator-rbac.json, which the Helm
chart's RBAC test compares its rules against. Regenerate with
`FRUGALSERVE_REGEN=1 pytest tests/operator` (every operator test adds what it used)."""

from __future__ import annotations

from pathlib import Path

import pytest

from frugalserve.ledger import open_ledger
from tests.operator.conftest import (
    MODELS,
    RAYSERVICES,
    REGEN,
    SECRETS,
    TENANTS,
    Cluster,
    OperatorFactory,
    committed_rbac,
    eventually,
    model,
    secret,
    settle,
)
from tests.operator.test_tenants import API_KEY, tenant

pytestmark = pytest.mark.operator


async def test_every_flow_uses_exactly_the_committed_verbs(
    cluster: Cluster, operator: OperatorFactory, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    async with operator(ledger_url=url, tenant_interval_s=0.2):
        await cluster.create(MODELS, model("broken", resources={"gpuType": "Z80"}))
        # A RayService of that name that the operator's watch does not deliver (unlabelled):
        # its create meets 409, and it reads the object to patch it.
        await cluster.create(RAYSERVICES, {"apiVersion": "ray.io/v1", "kind": "RayService",
                                           "metadata": {"name": "alpha"}, "spec": {}})
        await cluster.create(MODELS, model("alpha"))
        await eventually(lambda: cluster.get(RAYSERVICES, "alpha")["metadata"].get("labels"))
        await cluster.patch(RAYSERVICES, "default", "alpha",
                            {"status": {"serviceStatus": "Running"}}, sub="status")
        await cluster.create(SECRETS, secret("acme-key", API_KEY))
        await cluster.create(TENANTS, tenant("acme", budget={"limitUSD": 1}))
        await eventually(lambda: cluster.status(TENANTS, "acme").get("state"))
        ledger = open_ledger(url)
        ledger.reserve("default/acme", "r1", 1000, 10)
        ledger.settle("r1", 1000, 5, 5)
        ledger.close()
        await eventually(lambda: cluster.status(TENANTS, "acme").get("spentUSD") == 0.001)
        await settle(cluster)
    assert REGEN or cluster.k.verbs == committed_rbac()
