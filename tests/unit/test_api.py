"""The API models: every example is valid, and wrong manifests are refused with a message that
names the field a user wrote."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from frugalserve.api import ManifestError, ModelDeployment, Tenant, load_manifests, parse_resource
from frugalserve.api.models import field_path

pytestmark = pytest.mark.unit

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))

MD: dict[str, Any] = {
    "apiVersion": "frugalserve.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "llama", "namespace": "team"},
    "spec": {
        "model": {"source": "hf://meta-llama/Llama-3.1-8B", "parametersBillions": 8},
        "resources": {"gpusPerReplica": 1, "gpuType": "L4"},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
    },
}
TENANT: dict[str, Any] = {
    "apiVersion": "frugalserve.io/v1alpha1",
    "kind": "Tenant",
    "metadata": {"name": "team-a"},
    "spec": {"apiKeySecretRef": {"name": "team-a-key"}, "budget": {"limitUSD": 10}},
}


def mutate(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of base with the dotted path set to value (created as needed)."""
    doc = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return doc


# (base, dotted path, wrong value, field path expected in the message, words in the message)
BAD = [
    (MD, "spec.model.source", "ftp://models/x", "spec.model.source", "must start with"),
    (MD, "spec.model.source", "hf://", "spec.model.source", "needs a path"),
    (MD, "spec.model.source", "hf://just-a-name", "spec.model.source", "hf://org/name"),
    (MD, "spec.model.source", "builtin://gpt-9", "spec.model.source", "unknown builtin"),
    (MD, "spec.model.architecture", "rnn", "spec.model.architecture", "'dense' or 'moe'"),
    (MD, "spec.model.maxContextTokens", 4, "spec.model.maxContextTokens", "greater than or equal"),
    (MD, "spec.precision.dtype", "float8", "spec.precision.dtype", "bfloat16"),
    (MD, "spec.precision.quantization", "int3", "spec.precision.quantization", "int8"),
    (MD, "spec.resources.gpuType", "RTX-9090", "spec.resources.gpuType", "unknown GPU type"),
    (MD, "spec.resources.gpusPerReplica", -1, "spec.resources.gpusPerReplica", "greater than"),
    (MD, "spec.resources.gpusPerReplica", "two", "spec.resources.gpusPerReplica", "integer"),
    (MD, "spec.resources.cpu", "lots", "spec.resources.cpu", "pattern"),
    (MD, "spec.resources.tolerations", [{"effect": "Sometimes"}], "spec.resources.tolerations[0].effect", "NoSchedule"),  # noqa: E501
    (MD, "spec.autoscaling.minReplicas", 5, "spec.autoscaling", "minReplicas (5) must be <= maxReplicas (2)"),  # noqa: E501
    (MD, "spec.autoscaling.maxReplicas", 0, "spec.autoscaling.maxReplicas", "greater than"),
    (MD, "spec.autoscaling.maxHourlyCostUSD", -3, "spec.autoscaling.maxHourlyCostUSD", "greater"),
    (MD, "spec.autoscaling.targetOngoingRequests", 0, "spec.autoscaling.targetOngoingRequests", "greater"),  # noqa: E501
    (MD, "spec.pricing.gpuHourUSD", -0.5, "spec.pricing.gpuHourUSD", "greater than"),
    (MD, "spec.pricing.inputPerMillionUSD", 1.0, "spec.pricing", "set both"),
    (MD, "spec.fallback", "Not_A_Name", "spec.fallback", "pattern"),
    (MD, "spec.ray.rayVersion", "latest", "spec.ray.rayVersion", "pattern"),
    (MD, "spec.ray.upgradeStrategy", "Rolling", "spec.ray.upgradeStrategy", "NewCluster"),
    (MD, "spec.engine.maxBatchSize", 0, "spec.engine.maxBatchSize", "greater than"),
    (MD, "spec.autoscalling", {}, "spec.autoscalling", "Extra inputs are not permitted"),
    (MD, "metadata.name", "Bad_Name", "metadata.name", "pattern"),
    (MD, "spec.model.parametersBillions", 70, "spec", "130.4 GiB of weights, more than 90% of 1 x L4 (24 GiB)"),  # noqa: E501
    (TENANT, "spec.budget.limitUSD", -1, "spec.budget.limitUSD", "greater than"),
    (TENANT, "spec.budget.limitTokens", -5, "spec.budget.limitTokens", "greater than"),
    (TENANT, "spec.budget.period", "yearly", "spec.budget.period", "monthly"),
    (TENANT, "spec.budget.onExceeded", "ignore", "spec.budget.onExceeded", "downgrade"),
    (TENANT, "spec.rateLimit.requestsPerMinute", 0, "spec.rateLimit.requestsPerMinute", "greater"),
    (TENANT, "spec.models", [], "spec.models", "at least 1"),
    (TENANT, "spec.models", ["Bad Model"], "spec.models", "models[0]"),
    (TENANT, "spec.apiKeySecretRef", {}, "spec.apiKeySecretRef.name", "Field required"),
    (TENANT, "spec.priority", 5000, "spec.priority", "less than or equal"),
]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(path: Path) -> None:
    manifests = load_manifests(path)
    assert manifests.models or manifests.tenants


def test_valid_bases_parse() -> None:
    assert isinstance(parse_resource(MD), ModelDeployment)
    assert isinstance(parse_resource(TENANT), Tenant)


@pytest.mark.parametrize(
    ("base", "path", "value", "field", "words"), BAD, ids=[f"{b[1]}={b[2]!r}" for b in BAD]
)
def test_wrong_value_is_refused_naming_the_field(
    base: dict[str, Any], path: str, value: Any, field: str, words: str
) -> None:
    with pytest.raises(ManifestError) as info:
        parse_resource(mutate(base, path, value))
    assert any(
        line.startswith(f"{field}:") and words in line for line in info.value.errors
    ), info.value.errors


def test_bad_table_is_large_enough() -> None:
    assert len(BAD) >= 20


def test_weights_that_fit_are_accepted() -> None:
    # The same 70B model as in the table fits once quantized to int4 on one H100.
    doc = mutate(MD, "spec.model.parametersBillions", 70)
    doc["spec"]["precision"] = {"quantization": "int4"}
    doc["spec"]["resources"]["gpuType"] = "H100-80GB"
    assert parse_resource(doc).spec.precision.bytes_per_param() < 1


def test_wrong_kind_and_version_are_refused() -> None:
    with pytest.raises(ManifestError, match="apiVersion/kind"):
        parse_resource(mutate(MD, "apiVersion", "frugalserve.io/v2"))


def test_every_problem_of_a_file_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: frugalserve.io/v1alpha1\nkind: Tenant\nmetadata: {name: a}\n"
        "spec: {apiKeySecretRef: {name: k}, budget: {period: yearly}}\n---\n"
        "apiVersion: frugalserve.io/v1alpha1\nkind: ModelDeployment\nmetadata: {name: b}\n"
        "spec: {model: {source: 'ftp://x'}}\n---\n- not a mapping\n"
    )
    with pytest.raises(ManifestError) as info:
        load_manifests(bad)
    text = str(info.value)
    assert "#0 Tenant/a: spec.budget.period" in text
    assert "#1 ModelDeployment/b: spec.model.source" in text
    assert "#2: a manifest must be a mapping" in text


def test_secrets_are_decoded(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: k, namespace: ns}\n"
        "data: {api-key: c2VjcmV0}\nstringData: {other: plain}\n"
    )
    assert load_manifests(path).secrets[("ns", "k")] == {"api-key": "secret", "other": "plain"}


def test_field_path_reads_like_the_manifest() -> None:
    assert field_path(("spec", "resources", "tolerations", 0, "effect")) == (
        "spec.resources.tolerations[0].effect"
    )
