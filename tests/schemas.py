"""Schema validators for the objects frugalserve writes: KubeRay's published RayService CRD
(tests/fixtures, origin noted there) and our own generated CRDs. Used by every test layer."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBERAY_CRD = ROOT / "tests" / "fixtures" / "ray.io_rayservices.yaml"


def _json_schema(node: Any) -> Any:
    """A CRD's openAPIV3Schema as JSON Schema: int-or-string becomes a type list, other
    x-kubernetes-* keys are dropped."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["type"] = ["integer", "string"]
    return out


@cache
def crd_validator(path: Path) -> jsonschema.Draft7Validator:
    """A validator for objects of the (first, served) version of the CRD in `path`."""
    crd = yaml.safe_load(path.read_text())
    schema = _json_schema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def schema_errors(path: Path, obj: dict[str, Any]) -> list[str]:
    """Every schema violation of obj, as `path: message` lines (empty when valid)."""
    return [
        f"{'.'.join(str(p) for p in err.absolute_path)}: {err.message}"
        for err in crd_validator(path).iter_errors(obj)
    ]
