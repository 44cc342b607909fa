"""Reading manifests (YAML files of ModelDeployments, Tenants and Secrets) into validated models,
with every error reported as `file#index kind/name: field.path: message`. Used by the CLI and
local mode; the operator validates single objects with `parse_resource`."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from frugalserve.api.models import API_VERSION, ModelDeployment, Tenant, describe_errors

KINDS: dict[str, type[ModelDeployment] | type[Tenant]] = {
    "ModelDeployment": ModelDeployment,
    "Tenant": Tenant,
}


class ManifestError(ValueError):
    """A manifest that cannot be used; `errors` holds one `path: message` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def parse_resource(doc: dict[str, Any]) -> ModelDeployment | Tenant:
    """Validate one ModelDeployment or Tenant object; raise ManifestError naming each field."""
    kind = doc.get("kind")
    if doc.get("apiVersion") != API_VERSION or kind not in KINDS:
        raise ManifestError(
            [f"apiVersion/kind: expected {API_VERSION} ModelDeployment or Tenant, "
             f"got {doc.get('apiVersion')!r} {kind!r}"]
        )
    try:
        return KINDS[kind].model_validate(doc)
    except ValidationError as exc:
        raise ManifestError(describe_errors(exc.errors(include_url=False))) from None


def secret_data(doc: dict[str, Any]) -> dict[str, str]:
    """The decoded data of a v1 Secret (stringData wins over data, as the API server does)."""
    data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
    data.update(doc.get("stringData") or {})
    return data


@dataclass
class Manifests:
    """The objects of one or more YAML files, by kind."""

    models: list[ModelDeployment] = field(default_factory=list)
    tenants: list[Tenant] = field(default_factory=list)
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    """(namespace, name) -> decoded Secret data."""

    def api_key(self, tenant: Tenant) -> str | None:
        """The tenant's API key from a Secret of the same files, if one holds it."""
        ref = tenant.spec.api_key_secret_ref
        return self.secrets.get((tenant.metadata.namespace, ref.name), {}).get(ref.key)


def load_manifests(*paths: str | Path) -> Manifests:
    """Parse every document of the files; raise one ManifestError listing all problems."""
    out, errors = Manifests(), []
    for path in paths:
        try:
            docs = list(yaml.safe_load_all(Path(path).read_text()))
        except (OSError, yaml.YAMLError) as exc:
            raise ManifestError([f"{path}: {exc}"]) from None
        for index, doc in enumerate(d for d in docs if d is not None):
            where = f"{path}#{index}"
            if not isinstance(doc, dict):
                errors.append(f"{where}: a manifest must be a mapping")
                continue
            name = (doc.get("metadata") or {}).get("name", "?")
            where = f"{where} {doc.get('kind')}/{name}"
            if doc.get("apiVersion") == "v1" and doc.get("kind") == "Secret":
                ns = (doc.get("metadata") or {}).get("namespace", "default")
                out.secrets[(ns, name)] = secret_data(doc)
                continue
            try:
                obj = parse_resource(doc)
            except ManifestError as exc:
                errors.extend(f"{where}: {line}" for line in exc.errors)
                continue
            (out.models if isinstance(obj, ModelDeployment) else out.tenants).append(obj)  # type: ignore[arg-type]
    if errors:
        raise ManifestError(errors)
    return out
