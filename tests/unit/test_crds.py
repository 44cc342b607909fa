"""The generated CRDs: committed files equal a fresh render, schemas are structural, and the API
server would accept our examples and refuse what pydantic refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from frugalserve.api.crds import crds, to_yaml
from frugalserve.cli import main
from tests.schemas import ROOT, schema_errors

pytestmark = pytest.mark.unit

CRD_DIR = ROOT / "crds"
MD_CRD = CRD_DIR / "frugalserve.io_modeldeployments.yaml"
TENANT_CRD = CRD_DIR / "frugalserve.io_tenants.yaml"


def walk(node: Any, path: str = "", field: bool = False) -> list[tuple[str, bool, dict[str, Any]]]:
    """Every schema node with its path, and whether it is a named field (a property)."""
    out = [(path, field, node)]
    for name, child in node.get("properties", {}).items():
        out += walk(child, f"{path}.{name}", True)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out += walk(node[key], f"{path}[{key}]")
    return out


def test_committed_crds_equal_a_fresh_render() -> None:
    rendered = crds()
    assert sorted(p.name for p in CRD_DIR.glob("*.yaml")) == sorted(rendered)
    for name, crd in rendered.items():
        assert (CRD_DIR / name).read_text() == to_yaml(crd), "regenerate with `frugalserve crds`"


def test_cli_writes_the_same_bytes(tmp_path: Path) -> None:
    assert main(["crds", "-o", str(tmp_path)]) == 0
    for path in CRD_DIR.glob("*.yaml"):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes()


@pytest.mark.parametrize("path", [MD_CRD, TENANT_CRD], ids=lambda p: p.name)
def test_schema_is_structural(path: Path) -> None:
    version = yaml.safe_load(path.read_text())["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    for where, field, node in walk(root):
        assert "type" in node, f"{where} has no type"
        assert "$ref" not in node and "anyOf" not in node, where
        assert not ("properties" in node and "additionalProperties" in node), where
        assert "x-kubernetes-preserve-unknown-fields" not in node, where
        if field and where.startswith((".spec.", ".status.")):
            assert node.get("description"), f"{where} has no description"
    assert version["subresources"] == {"status": {}}


def test_names_and_printer_columns() -> None:
    md = yaml.safe_load(MD_CRD.read_text())["spec"]
    tenant = yaml.safe_load(TENANT_CRD.read_text())["spec"]
    assert md["names"]["shortNames"] == ["md"] and tenant["names"]["shortNames"] == ["tn"]
    columns = lambda crd: [c["name"] for c in crd["versions"][0]["additionalPrinterColumns"]]  # noqa: E731
    assert columns(md) == ["READY", "REPLICAS", "$/1M TOKENS", "$/HOUR", "AGE"]
    assert columns(tenant) == ["STATE", "SPENT", "REMAINING", "AGE"]


def test_api_server_schema_accepts_every_example() -> None:
    for path in (ROOT / "examples").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            crd = {"ModelDeployment": MD_CRD, "Tenant": TENANT_CRD}.get(doc["kind"])
            if crd is not None:
                assert schema_errors(crd, doc) == [], path


def test_api_server_schema_refuses_a_wrong_enum_and_a_negative_budget() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "dense.yaml").read_text())
    doc["spec"]["precision"]["quantization"] = "int3"
    assert any("spec.precision.quantization" in e for e in schema_errors(MD_CRD, doc))
    tenant = {"apiVersion": "frugalserve.io/v1alpha1", "kind": "Tenant", "metadata": {},
              "spec": {"apiKeySecretRef": {"name": "k"}, "budget": {"limitUSD": -1}}}
    assert any("spec.budget.limitUSD" in e for e in schema_errors(TENANT_CRD, tenant))


def test_cross_field_rules_are_carried_as_cel() -> None:
    autoscaling = yaml.safe_load(MD_CRD.read_text())["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]["properties"]["spec"]["properties"]["autoscaling"]
    rules = [r["rule"] for r in autoscaling["x-kubernetes-validations"]]
    assert rules == ["self.minReplicas <= self.maxReplicas"]
