"""Reconcile logic between the thin handlers and the API: the desired RayService of a
ModelDeployment (render + a spec hash), the decision to create, patch or leave it, and the
tenants' serving configs. Pure except `apply_rayservice` and `KeyHashes.refresh` (blocking)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from frugalserve.api.manifests import ManifestError, parse_resource
from frugalserve.api.models import ModelDeployment, Tenant
from frugalserve.operator.diff import SPEC_HASH_ANNOTATION, merge_patch, stable_hash
from frugalserve.operator.kube import Conflict, Kube
from frugalserve.operator.render import FallbackError, RenderSettings, fallback_chain, render
from frugalserve.serving.config import TenantConfig, hash_key, tenant_config


def snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """A detached copy of a kopf body (its views change under us) for the in-memory indexes."""
    return copy.deepcopy(dict(body))


def parse_model(doc: Mapping[str, Any]) -> ModelDeployment:
    """A ModelDeployment body without status; ManifestError names the bad fields."""
    md = parse_resource({k: v for k, v in doc.items() if k != "status"})
    assert isinstance(md, ModelDeployment)  # kind checked by parse_resource
    return md


def parse_tenant(doc: Mapping[str, Any]) -> Tenant:
    """A Tenant body without status; ManifestError names the bad fields."""
    tenant = parse_resource({k: v for k, v in doc.items() if k != "status"})
    assert isinstance(tenant, Tenant)  # kind checked by parse_resource
    return tenant


class LazyModels(Mapping[str, ModelDeployment]):
    """A namespace's ModelDeployments by name, parsed only when a fallback chain reaches one."""

    def __init__(self, docs: Mapping[str, Mapping[str, Any]]) -> None:
        self._docs = docs

    def __getitem__(self, name: str) -> ModelDeployment:
        try:
            return parse_model(self._docs[name])
        except ManifestError as exc:
            raise FallbackError(f"spec.fallback: ModelDeployment {name!r} is invalid: "
                                f"{exc}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._docs)

    def __len__(self) -> int:
        return len(self._docs)


class KeyHashes:
    """SHA-256 of each tenant API key, by (namespace, secret, key); the key itself is dropped
    as soon as it is hashed."""

    def __init__(self) -> None:
        self._hashes: dict[tuple[str, str, str], str | None] = {}

    def refresh(self, kube: Kube, tenant: Tenant) -> str | None:
        """Read the tenant's Secret again (blocking); None when the Secret or key is missing."""
        ref = tenant.spec.api_key_secret_ref
        value = kube.secret_value(tenant.metadata.namespace, ref.name, ref.key)
        digest = None if value is None else hash_key(value)
        self._hashes[(tenant.metadata.namespace, ref.name, ref.key)] = digest
        return digest

    def reread(self, kube: Kube, tenant: Tenant) -> bool:
        """Read a Secret seen before again (blocking): True when its hash changed (a rotated,
        revoked or restored key). A Secret never seen is left to the Tenant's handler."""
        ref = tenant.spec.api_key_secret_ref
        where = (tenant.metadata.namespace, ref.name, ref.key)
        if where not in self._hashes:
            return False
        before = self._hashes[where]
        return self.refresh(kube, tenant) != before

    def get(self, kube: Kube, tenant: Tenant) -> str | None:
        """The cached hash, read once (blocking) when never seen."""
        ref = tenant.spec.api_key_secret_ref
        where = (tenant.metadata.namespace, ref.name, ref.key)
        return self._hashes[where] if where in self._hashes else self.refresh(kube, tenant)


def tenant_configs(kube: Kube, hashes: KeyHashes, docs: Iterable[Mapping[str, Any]]
                   ) -> list[TenantConfig]:
    """The gateway's view of valid Tenants whose key is resolvable, sorted by name (blocking
    on the first sight of a Secret)."""
    out = []
    for doc in docs:
        try:
            tenant = parse_tenant(doc)
        except ManifestError:
            continue  # reported on the Tenant itself
        digest = hashes.get(kube, tenant)
        if digest is not None:
            out.append(tenant_config(tenant, digest))
    return sorted(out, key=lambda t: t.name)


def dependents(name: str, docs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """ModelDeployments whose fallback chain passes through `name` (their RayServices carry
    its worker group and model config), sorted."""
    out = []
    for other, doc in docs.items():
        seen, current = {other}, doc
        while (fallback := (current.get("spec") or {}).get("fallback")) and fallback not in seen:
            if fallback == name:
                out.append(other)
                break
            seen.add(fallback)
            if fallback not in docs:
                break
            current = docs[fallback]
    return sorted(out)


def desired_rayservice(
    md: ModelDeployment,
    models: Mapping[str, ModelDeployment],
    tenants: list[TenantConfig],
    settings: RenderSettings,
) -> dict[str, Any]:
    """The RayService md should own, annotated with the hash of its rendering.
    Raises FallbackError / CostCeilingError."""
    rendered = render(md, settings, fallback_chain(md, models), tenants)
    rendered["metadata"]["annotations"] = {SPEC_HASH_ANNOTATION: stable_hash(rendered)}
    return rendered


def rayservice_patch(existing: Mapping[str, Any], desired: Mapping[str, Any]
                     ) -> dict[str, Any] | None:
    """The merge patch bringing existing to desired (None when its hash already matches):
    our labels, annotation and ownerReferences, the minimal spec diff, and the
    resourceVersion it was computed against (a stale one gets 409)."""
    meta, want = existing.get("metadata") or {}, desired["metadata"]
    if (meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION) == \
            want["annotations"][SPEC_HASH_ANNOTATION]:
        return None
    return {
        "metadata": {
            "labels": want["labels"],
            "annotations": want["annotations"],
            "ownerReferences": want["ownerReferences"],
            "resourceVersion": meta.get("resourceVersion"),
        },
        "spec": merge_patch(existing.get("spec") or {}, desired["spec"]),
    }


def apply_rayservice(kube: Kube, desired: dict[str, Any], existing: Mapping[str, Any] | None
                     ) -> dict[str, Any] | None:
    """Create or patch the RayService (blocking); the written object, or None if unchanged.
    `existing` may lag (an index): a 409 on create falls back to read-and-patch; a 409 on
    patch propagates as Conflict for a retry."""
    namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
    if existing is None:
        try:
            return kube.create_rayservice(desired)
        except Conflict:
            existing = kube.get_rayservice(namespace, name)
            if existing is None:
                raise
    patch = rayservice_patch(existing, desired)
    return None if patch is None else kube.patch_rayservice(namespace, name, patch)
