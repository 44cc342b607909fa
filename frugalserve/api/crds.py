"""CustomResourceDefinitions generated from the pydantic models, so the schema a cluster enforces
is the schema the code validates. Called by `frugalserve crds` and checked by a test against the
committed crds/*.yaml."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from frugalserve.api.models import (
    GROUP,
    VERSION,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    TenantSpec,
    TenantStatus,
)

# JSON-schema keys with no place in a structural OpenAPI v3 schema.
_DROPPED_KEYS = {"title", "$defs"}
# Cross-field rules the API server checks itself (CEL), mirroring the pydantic validators.
_CEL_RULES: dict[str, list[dict[str, str]]] = {
    "Autoscaling": [
        {"rule": "self.minReplicas <= self.maxReplicas",
         "message": "minReplicas must be <= maxReplicas"},
    ],
    "Pricing": [
        {"rule": "has(self.inputPerMillionUSD) == has(self.outputPerMillionUSD)",
         "message": "set both inputPerMillionUSD and outputPerMillionUSD, or neither"},
    ],
}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs, turn Optional[X] into X, consts into enums, and drop what k8s refuses."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        resolved = _structural(defs[name], defs)
        if name in _CEL_RULES:
            resolved["x-kubernetes-validations"] = _CEL_RULES[name]
        return resolved | {k: _structural(v, defs) for k, v in node.items() if k != "$ref"}
    any_of = node.get("anyOf")
    if any_of is not None:
        options = [o for o in any_of if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express union {any_of} in a structural schema")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return _structural(options[0] | rest, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or (key == "default" and value is None):
            continue
        if key == "additionalProperties" and isinstance(value, bool):
            continue  # extra="forbid": a structural schema prunes unknown fields instead
        if key == "const":
            out["enum"] = [value]
            continue
        out[key] = value if key in {"enum", "required", "default", "pattern"} else _structural(
            value, defs
        )
    if "properties" in out:
        out.setdefault("type", "object")
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one pydantic model, camelCase field names."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return dict(_structural(schema, schema.get("$defs", {})))


def _crd(
    kind: str, plural: str, short: str, spec: type[BaseModel], status: type[BaseModel],
    columns: list[dict[str, Any]], description: str,
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["frugalserve"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": openapi_schema(spec),
                                "status": openapi_schema(status),
                            },
                        }
                    },
                }
            ],
        },
    }


def _column(name: str, path: str, type_: str, description: str = "") -> dict[str, Any]:
    column = {"name": name, "jsonPath": path, "type": type_}
    return column | ({"description": description} if description else {})


AGE = _column("AGE", ".metadata.creationTimestamp", "date")


def crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD object, for both resources."""
    md = _crd(
        "ModelDeployment", "modeldeployments", "md", ModelDeploymentSpec, ModelDeploymentStatus,
        [
            _column("READY", '.status.conditions[?(@.type=="Ready")].status', "string"),
            _column("REPLICAS", ".status.replicas.ready", "integer", "Ready replicas"),
            _column("$/1M TOKENS", ".status.liveCostPerMillionTokensUSD", "number",
                    "Live GPU cost per million tokens"),
            _column("$/HOUR", ".status.hourlyCostUSD", "number", "GPU cost per hour"),
            AGE,
        ],
        "A model served on Ray Serve with cost-capped autoscaling and live token pricing.",
    )
    tenant = _crd(
        "Tenant", "tenants", "tn", TenantSpec, TenantStatus,
        [
            _column("STATE", ".status.state", "string"),
            _column("SPENT", ".status.spentUSD", "number", "USD spent this period"),
            _column("REMAINING", ".status.remainingUSD", "number", "USD left this period"),
            AGE,
        ],
        "A consumer of models with an API key, allowed models, a budget and rate limits.",
    )
    return {f"{GROUP}_modeldeployments.yaml": md, f"{GROUP}_tenants.yaml": tenant}


class _PlainDumper(yaml.SafeDumper):
    """Writes shared sub-objects out in full instead of as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None  # embedded documents (serveConfigV2) stay readable
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_PlainDumper.add_representer(str, _str_representer)


def to_yaml(obj: Any) -> str:
    """Deterministic YAML (sorted keys) for generated files and rendered manifests."""
    return yaml.dump(obj, Dumper=_PlainDumper, sort_keys=True, default_flow_style=False, width=100)
