"""Least privilege: the chart's (Cluster)Role rules grant exactly the (apiGroup, resource, verb)
triples the operator used in its tests (tests/fixtures/operator-rbac.json, recorded by
tests/operator against kmock with real kopf), no wildcards, namespaced where the values ask."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from tests.chart.conftest import ROOT, Release, load_values

pytestmark = pytest.mark.chart

RECORDED = ROOT / "tests" / "fixtures" / "operator-rbac.json"
Triple = tuple[str, str, str]


def recorded() -> set[Triple]:
    entries = json.loads(RECORDED.read_text())
    return {(e["apiGroup"], e["resource"], e["verb"]) for e in entries}


def granted(rules: Iterable[dict[str, Any]]) -> set[Triple]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def difference(granted_: set[Triple], used: set[Triple]) -> dict[str, list[Triple]]:
    """What the rules grant beyond what was used, and what was used but not granted."""
    return {"extra": sorted(granted_ - used), "missing": sorted(used - granted_)}


def rules_of(release: Release, kind: str) -> list[dict[str, Any]]:
    return [rule for obj in release.of_kind(kind) for rule in obj["rules"]]


def test_cluster_wide_rules_are_exactly_what_the_operator_used(
    release: Callable[[str], Release],
) -> None:
    rel = release("default")
    assert rel.of_kind("Role") == []
    diff = difference(granted(rules_of(rel, "ClusterRole")), recorded())
    assert diff == {"extra": [], "missing": []}, f"granted but unused: {diff['extra']}; " \
        f"used but not granted: {diff['missing']}"


def test_namespaced_rules_are_exactly_what_the_operator_used(
    release: Callable[[str], Release],
) -> None:
    rel = release("all-values")
    namespaces = load_values("ci/all-values.yaml")["operator"]["watchNamespaces"]
    roles = rel.of_kind("Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(namespaces)
    bindings = rel.of_kind("RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(namespaces)
    assert rel.of_kind("ClusterRole") == [] and rel.of_kind("ClusterRoleBinding") == []
    for role in roles:
        diff = difference(granted(role["rules"]), recorded())
        assert diff == {"extra": [], "missing": []}, (
            f"{role['metadata']['namespace']}: granted but unused: {diff['extra']}; "
            f"used but not granted: {diff['missing']}")


def test_the_comparison_fails_when_a_rule_is_removed_or_added(
    release: Callable[[str], Release],
) -> None:
    rules = rules_of(release("default"), "ClusterRole")
    # Negative control: take back one verb the operator used (creating RayServices).
    dropped = ("ray.io", "rayservices", "create")
    assert dropped in recorded()
    fewer = [
        {**rule, "verbs": [v for v in rule["verbs"] if v != "create"]}
        if rule["resources"] == ["rayservices"] else rule
        for rule in rules
    ]
    assert difference(granted(fewer), recorded())["missing"] == [dropped]
    # And one more than used.
    more = [*rules, {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}]
    assert difference(granted(more), recorded())["extra"] == [("", "pods", "delete")]


@pytest.mark.parametrize("scenario", ["default", "all-values"])
def test_no_wildcards(release: Callable[[str], Release], scenario: str) -> None:
    rel = release(scenario)
    for rule in rules_of(rel, "ClusterRole") + rules_of(rel, "Role"):
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
    for binding in rel.of_kind("ClusterRoleBinding") + rel.of_kind("RoleBinding"):
        (subject,) = binding["subjects"]
        assert subject["kind"] == "ServiceAccount"
