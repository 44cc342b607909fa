"""Tenants reconciled by the real operator: the key's hash reaches the gateway's user_config
(and the key itself nowhere else), the ledger learns the limits, and its usage comes back as
Tenant.status."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from frugalserve.ledger import open_ledger
from frugalserve.serving.config import hash_key
from tests.operator.conftest import (
    MODELS,
    RAYSERVICES,
    SECRETS,
    TENANTS,
    Cluster,
    OperatorFactory,
    eventually,
    model,
    secret,
    settle,
)

pytestmark = pytest.mark.operator
API_KEY = "fs-live-7c1e9a0b5d2f4e8a9b3c6d1e0f2a4b6c"


def tenant(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "frugalserve.io/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"apiKeySecretRef": {"name": f"{name}-key"}, **spec}}


def gateway_tenants(rs: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The tenants in the Gateway deployment's user_config of a RayService."""
    if rs is None:
        return []
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    gateway = next(d for d in app["deployments"] if d["name"] == "Gateway")
    tenants: list[dict[str, Any]] = gateway["user_config"]["tenants"]
    return tenants


async def test_tenant_key_hash_reaches_the_serving_config_and_the_key_nowhere_else(
    cluster: Cluster, operator: OperatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with operator():
        await cluster.create(SECRETS, secret("acme-key", API_KEY))
        await cluster.create(MODELS, model("alpha"))
        await cluster.create(MODELS, model("beta"))
        rs = await eventually(lambda: cluster.get(RAYSERVICES, "alpha"))
        uid = rs["metadata"]["uid"]
        await cluster.create(TENANTS, tenant("acme", models=["alpha"],
                                             budget={"limitUSD": 5, "period": "daily"}))
        found = await eventually(lambda: gateway_tenants(cluster.get(RAYSERVICES, "alpha")))
        assert found[0]["name"] == "default/acme"  # the ledger key
        assert found[0]["key_sha256"] == hash_key(API_KEY)
        assert found[0]["limit_micros"] == 5_000_000
        assert cluster.get(RAYSERVICES, "alpha")["metadata"]["uid"] == uid  # patched in place
        await settle(cluster)
        assert gateway_tenants(cluster.get(RAYSERVICES, "beta")) == []  # not allowed there
        # A budget change reaches the same user_config; removal takes the tenant out.
        await cluster.patch(TENANTS, "default", "acme", {"spec": {"budget": {"limitUSD": 7}}})
        await eventually(lambda: gateway_tenants(cluster.get(RAYSERVICES, "alpha"))[0]
                         ["limit_micros"] == 7_000_000)
        await cluster.delete(TENANTS, "default", "acme")
        await eventually(lambda: gateway_tenants(cluster.get(RAYSERVICES, "alpha")) == [])
        await settle(cluster)
    secrets = {(res, name) for (res, _, name) in cluster.k.objects if res == SECRETS}
    everything = [obj.raw for key, obj in cluster.k.objects.items()
                  if key[0] != SECRETS and not obj.deleted]
    assert secrets and everything
    written = [r.text for r in cluster.k._requests if r.method.value != "GET"
               and "/secrets" not in str(r.url)]
    haystack = json.dumps(everything) + "".join(written) + caplog.text
    assert API_KEY not in haystack
    assert hash_key(API_KEY) in haystack  # the negative control: the search does find things


async def test_ledger_usage_becomes_tenant_status(
    cluster: Cluster, operator: OperatorFactory, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    async with operator(ledger_url=url, tenant_interval_s=0.2):
        await cluster.create(SECRETS, secret("acme-key", API_KEY))
        await cluster.create(TENANTS, tenant("acme", budget={"limitUSD": 1}))
        status = await eventually(lambda: (cluster.get(TENANTS, "acme") or {}).get("status", {})
                                  .get("state"))
        assert status == "Active"
        ledger = open_ledger(url)
        try:
            assert ledger.tenants() == ["default/acme"]  # the operator configured its limits
            ledger.reserve("default/acme", "r1", 600_000, 100)
            ledger.settle("r1", 400_000, 30, 70)
            await eventually(lambda: cluster.get(TENANTS, "acme")["status"]["spentUSD"] == 0.4)
            current = cluster.get(TENANTS, "acme")["status"]
            assert current["remainingUSD"] == 0.6
            assert current["tokensUsed"] == {"prompt": 30, "completion": 70}
            assert current["periodStart"].endswith("Z")
            await settle(cluster)
            quiet = len(cluster.operator_writes())
            ledger.reserve("default/acme", "r2", 600_000, 100)
            ledger.settle("r2", 600_000, 10, 10)
            await eventually(lambda: cluster.get(TENANTS, "acme")["status"]["state"]
                             == "Exhausted")
            assert len(cluster.operator_writes()) == quiet + 1  # one status write, no more
        finally:
            ledger.close()


async def test_same_name_in_two_namespaces_has_two_budgets(
    cluster: Cluster, operator: OperatorFactory, tmp_path: Path
) -> None:
    """The ledger is cluster-wide: Tenants are keyed by namespace/name there, so `team-a` of
    ns1 and `team-a` of ns2 each have their own limit, usage and status."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    async with operator(ledger_url=url, tenant_interval_s=0.2):
        for ns, limit, key in (("ns1", 1, API_KEY), ("ns2", 2, API_KEY + "-2")):
            await cluster.create(SECRETS, secret("team-a-key", key, namespace=ns))
            await cluster.create(MODELS, {**model("alpha"),
                                          "metadata": {"name": "alpha", "namespace": ns}})
            await cluster.create(TENANTS, tenant("team-a", ns, budget={"limitUSD": limit}))

        def status(ns: str) -> dict[str, Any]:
            return dict((cluster.get(TENANTS, "team-a", ns) or {}).get("status") or {})

        await eventually(lambda: status("ns1").get("state") and status("ns2").get("state"))
        for ns in ("ns1", "ns2"):  # the gateway reserves under the same key
            found = await eventually(lambda ns=ns: gateway_tenants(
                cluster.get(RAYSERVICES, "alpha", ns)))
            assert [t["name"] for t in found] == [f"{ns}/team-a"]
        ledger = open_ledger(url)
        try:
            assert ledger.tenants() == ["ns1/team-a", "ns2/team-a"]
            assert ledger.usage("ns1/team-a").limit_micros == 1_000_000
            assert ledger.usage("ns2/team-a").limit_micros == 2_000_000
            ledger.reserve("ns1/team-a", "r1", 1_000_000, 100)
            ledger.settle("r1", 1_000_000, 30, 70)
            await eventually(lambda: status("ns1").get("state") == "Exhausted")
            assert status("ns1")["spentUSD"] == 1.0
            await settle(cluster)
            untouched = ledger.usage("ns2/team-a")
            assert (untouched.spent_micros, untouched.remaining_micros) == (0, 2_000_000)
            assert status("ns2")["state"] == "Active"
            assert status("ns2")["spentUSD"] == 0
            assert status("ns2")["remainingUSD"] == 2.0
        finally:
            ledger.close()


def ready(cluster: Cluster, name: str) -> dict[str, Any]:
    conditions = ((cluster.get(TENANTS, name) or {}).get("status") or {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "Ready"), {})


async def test_a_rotated_key_reaches_the_gateway_and_a_deleted_one_is_revoked(
    cluster: Cluster, operator: OperatorFactory
) -> None:
    """The key timer reads the Secrets again: rotation swaps the hash in place, deletion takes
    the tenant out of the gateway's config (Ready=False) and restoring it brings it back."""
    new_key = API_KEY + "-rotated"

    def hashes() -> list[str]:
        return [t["key_sha256"] for t in gateway_tenants(cluster.get(RAYSERVICES, "alpha"))]

    async with operator(key_interval_s=0.2):
        await cluster.create(SECRETS, secret("acme-key", API_KEY))
        await cluster.create(MODELS, model("alpha"))
        await cluster.create(TENANTS, tenant("acme", models=["alpha"]))
        await eventually(lambda: hashes() == [hash_key(API_KEY)])
        uid = cluster.get(RAYSERVICES, "alpha")["metadata"]["uid"]
        await cluster.patch(SECRETS, "default", "acme-key", secret("acme-key", new_key))
        await eventually(lambda: hashes() == [hash_key(new_key)])
        assert cluster.get(RAYSERVICES, "alpha")["metadata"]["uid"] == uid  # patched in place
        await cluster.delete(SECRETS, "default", "acme-key")
        await eventually(lambda: hashes() == [])
        revoked = await eventually(lambda: ready(cluster, "acme").get("status") == "False"
                                   and ready(cluster, "acme"))
        assert revoked["reason"] == "SecretMissing" and "acme-key" in revoked["message"]
        await cluster.create(SECRETS, secret("acme-key", new_key))
        await eventually(lambda: hashes() == [hash_key(new_key)])
        await eventually(lambda: ready(cluster, "acme").get("reason") == "KeyResolved")


async def test_without_the_key_timer_a_rotation_is_not_seen(
    cluster: Cluster, operator: OperatorFactory
) -> None:
    """Negative control of the test above: the timer (not some other path) picks it up."""
    async with operator(key_interval_s=3600):
        await cluster.create(SECRETS, secret("acme-key", API_KEY))
        await cluster.create(MODELS, model("alpha"))
        await cluster.create(TENANTS, tenant("acme", models=["alpha"]))
        await eventually(lambda: gateway_tenants(cluster.get(RAYSERVICES, "alpha")))
        await cluster.patch(SECRETS, "default", "acme-key", secret("acme-key", API_KEY + "-x"))
        await settle(cluster, quiet=1.5)
        found = gateway_tenants(cluster.get(RAYSERVICES, "alpha"))
        assert [t["key_sha256"] for t in found] == [hash_key(API_KEY)]
