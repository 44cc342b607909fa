"""tenant_config(): a TenantConfig's name is the tenant's ledger key, `namespace/name`, so
Tenants of the same name in two namespaces never share a budget in the cluster-wide ledger;
ledger_limits() is the one TenantConfig -> TenantLimits conversion."""

from __future__ import annotations

from typing import Any

import pytest

from frugalserve.api.manifests import parse_resource
from frugalserve.api.models import Tenant
from frugalserve.ledger import Period, TenantLimits, validate
from frugalserve.serving.config import hash_key, ledger_limits, ledger_tenant, tenant_config

pytestmark = pytest.mark.unit


def tenant(metadata: dict[str, Any], **spec: Any) -> Tenant:
    doc = {"apiVersion": "frugalserve.io/v1alpha1", "kind": "Tenant", "metadata": metadata,
           "spec": {"apiKeySecretRef": {"name": "key"}, **spec}}
    parsed = parse_resource(doc)
    assert isinstance(parsed, Tenant)
    return parsed


def test_the_name_is_the_ledger_key_namespace_slash_name() -> None:
    digest = hash_key("k")
    one = tenant_config(tenant({"name": "team-a", "namespace": "ns1"}), digest)
    two = tenant_config(tenant({"name": "team-a", "namespace": "ns2"}), digest)
    assert one.name == ledger_tenant("ns1", "team-a") == "ns1/team-a"
    assert two.name == "ns2/team-a"
    assert tenant_config(tenant({"name": "demo"}), digest).name == "default/demo"


def test_the_longest_key_is_a_valid_ledger_tenant() -> None:
    key = tenant_config(tenant({"name": "n" * 63, "namespace": "s" * 63}), hash_key("k")).name
    assert validate.name("tenant", key) == key


def test_ledger_limits_of_a_tenant_config() -> None:
    config = tenant_config(
        tenant({"name": "team-a", "namespace": "ns1"},
               budget={"limitUSD": 2.5, "limitTokens": 1000, "period": "daily"},
               rateLimit={"requestsPerMinute": 60, "tokensPerMinute": 5000}),
        hash_key("k"))
    assert ledger_limits(config) == TenantLimits(
        limit_micros=2_500_000, limit_tokens=1000, period=Period.DAILY,
        requests_per_minute=60, tokens_per_minute=5000)
