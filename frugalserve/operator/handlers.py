"""The kopf handlers, registered on a fresh registry by `register(context)`: thin adapters that
parse, call the pure reconcile/status functions, write through `Kube`, and report.

No finalizers: a RayService goes with its ModelDeployment through its ownerReference, and the
ledger keeps a deleted Tenant's spent usage on purpose (audit), so nothing outside Kubernetes
needs cleaning up; and the periodic jobs are operator-wide loops, not kopf timers (which add a
finalizer to every object). Blocking calls (API client, ledger, metrics) run in threads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

import kopf

from frugalserve.api.manifests import ManifestError
from frugalserve.api.models import GROUP, VERSION
from frugalserve.operator import periodic
from frugalserve.operator import status as st
from frugalserve.operator.context import Context
from frugalserve.operator.kube import Conflict
from frugalserve.operator.reconcile import (
    LazyModels,
    apply_rayservice,
    dependents,
    desired_rayservice,
    parse_model,
    parse_tenant,
    snapshot,
    tenant_configs,
)
from frugalserve.operator.render import MANAGED_BY, MODEL_LABEL, FallbackError
from frugalserve.pricing.cost import CostCeilingError, replica_bounds
from frugalserve.serving.config import TenantConfig, ledger_limits, tenant_config

MODELS = (GROUP, VERSION, "modeldeployments")
TENANTS = (GROUP, VERSION, "tenants")
RAYSERVICES = ("ray.io", "v1", "rayservices")
RETRY_S = 30.0


def by_kwargs(fn: Callable[..., Any]) -> Any:
    """Mark a handler that takes kopf's kwargs by name, indexes included: kopf's callback
    protocols cannot express required extra kwargs, so the typed signature is erased here."""
    return fn


def on_spec(group: str, version: str, plural: str, *, id: str,
            registry: kopf.OperatorRegistry) -> Callable[[Any], Any]:
    """Register one handler for create, update and resume alike (the spec to reconcile)."""
    def decorator(fn: Any) -> Any:
        for on in (kopf.on.create, kopf.on.update, kopf.on.resume):
            on(group, version, plural, id=id, registry=registry)(fn)
        return fn
    return decorator


def _by_name(docs: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs}


def _all(index: kopf.Index[str, Any]) -> list[Mapping[str, Any]]:
    """Every object of an index by namespace (copied in the event loop, for a thread)."""
    return [doc for namespace in sorted(index) for doc in index[namespace]]


def _first(docs: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return next(iter(docs), None)


def _set_status(patch: kopf.Patch, previous: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Put into the patch only the status fields that changed (nothing at all if none)."""
    delta = st.changed(previous, new)
    if delta:
        patch.status.update(delta)


def _invalid(ctx: Context, body: kopf.Body, patch: kopf.Patch, errors: list[str]) -> NoReturn:
    """Valid=False naming the fields, a Warning event; raises PermanentError."""
    status = body.get("status") or {}
    new = st.invalid_status(errors, body.metadata.get("generation"), status, ctx.now())
    _set_status(patch, status, new)
    message = "; ".join(errors)
    kopf.warn(body, reason="InvalidSpec", message=message)
    raise kopf.PermanentError(f"invalid spec: {message}")


def register(ctx: Context) -> kopf.OperatorRegistry:
    """A registry holding every handler of the operator, bound to ctx."""
    registry = kopf.OperatorRegistry()
    settings = ctx.settings

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="frugalserve.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="frugalserve.io", key="last-handled-configuration")
        settings.posting.level = logging.WARNING
        settings.watching.label_selectors[RAYSERVICES[0], RAYSERVICES[2]] = (
            f"app.kubernetes.io/managed-by={MANAGED_BY}")

    loops: list[asyncio.Task[None]] = []

    @kopf.on.startup(registry=registry)
    @by_kwargs
    async def start_periodic(models_idx: kopf.Index[str, Any], tenants_idx: kopf.Index[str, Any],
                             rayservices_idx: kopf.Index[Any, Any], **_: Any) -> None:
        """The live cost, tenant usage and key rotation loops, over the indexes kopf keeps
        current."""
        stale: set[str] = set()  # namespaces whose Serve configs still miss a key change

        async def cost() -> None:
            await asyncio.to_thread(periodic.cost_tick, ctx, _all(models_idx))

        async def usage() -> None:
            await asyncio.to_thread(periodic.tenant_tick, ctx, _all(tenants_idx))

        async def keys() -> None:
            stale.update(await asyncio.to_thread(periodic.key_tick, ctx, _all(tenants_idx)))
            for namespace in sorted(stale):
                await reapply(namespace, None, await configs_in(namespace, tenants_idx),
                              models_idx, rayservices_idx)
                stale.discard(namespace)

        loops.extend(asyncio.create_task(periodic.every(interval, job)) for interval, job in (
            (settings.cost_interval_s, cost), (settings.tenant_interval_s, usage),
            (settings.key_interval_s, keys)))

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        ctx.close()

    @kopf.index(*MODELS, id="models_idx", registry=registry)
    @by_kwargs
    def models_idx(namespace: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
        return {namespace: snapshot(body)}

    @kopf.index(*TENANTS, id="tenants_idx", registry=registry)
    @by_kwargs
    def tenants_idx(namespace: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
        return {namespace: snapshot(body)}

    @kopf.index(*RAYSERVICES, id="rayservices_idx", labels={MODEL_LABEL: kopf.PRESENT},
                registry=registry)
    @by_kwargs
    def rayservices_idx(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
                        ) -> dict[Any, Any]:
        return {(namespace, labels[MODEL_LABEL]): snapshot(body)}

    async def configs_in(namespace: str, tenants: kopf.Index[str, Any]) -> list[TenantConfig]:
        """The gateway's view of the namespace's Tenants (a Secret read on first sight)."""
        return await asyncio.to_thread(tenant_configs, ctx.kube, ctx.hashes,
                                       list(tenants.get(namespace, [])))

    async def reapply(namespace: str, names: Iterable[str] | None, configs: list[TenantConfig],
                      models: kopf.Index[str, Any], rayservices: kopf.Index[Any, Any]) -> None:
        """Re-render the named ModelDeployments' RayServices (None: all of the namespace) after
        a Tenant or fallback change (each writes only if its render changed; a broken one is
        left to its own handler)."""
        docs = _by_name(models.get(namespace, []))
        lazy = LazyModels(docs)
        for name in sorted(set(docs) if names is None else set(names) & set(docs)):
            try:
                desired = desired_rayservice(lazy[name], lazy, configs, ctx.render_settings)
            except (FallbackError, CostCeilingError):
                continue
            existing = _first(rayservices.get((namespace, name), []))
            try:
                await asyncio.to_thread(apply_rayservice, ctx.kube, desired, existing)
            except Conflict as exc:
                raise kopf.TemporaryError(f"RayService {name} changed meanwhile: {exc}",
                                          delay=1) from None

    @on_spec(*MODELS, id="reconcile", registry=registry)
    @by_kwargs
    async def reconcile_model(body: kopf.Body, namespace: str, name: str, status: kopf.Status,
                              patch: kopf.Patch, models_idx: kopf.Index[str, Any],
                              tenants_idx: kopf.Index[str, Any],
                              rayservices_idx: kopf.Index[Any, Any], **_: Any) -> None:
        """Validate, render, create or patch the RayService if its render changed, report."""
        docs = _by_name(models_idx.get(namespace, []))
        try:
            md = parse_model(body)
            bounds = replica_bounds(md.spec, settings.gpu_prices)
        except ManifestError as exc:
            _invalid(ctx, body, patch, exc.errors)
        except CostCeilingError as exc:
            _invalid(ctx, body, patch, [str(exc)])
        configs = await configs_in(namespace, tenants_idx)
        try:
            desired = desired_rayservice(md, LazyModels(docs), configs, ctx.render_settings)
        except FallbackError as exc:
            _set_status(patch, status, {"conditions": st.merge_conditions(
                status.get("conditions") or [],
                [st.condition("Ready", False, "FallbackUnresolved", str(exc))], ctx.now())})
            raise kopf.TemporaryError(str(exc), delay=RETRY_S) from None
        existing = _first(rayservices_idx.get((namespace, name), []))
        try:
            written = await asyncio.to_thread(apply_rayservice, ctx.kube, desired, existing)
        except Conflict as exc:
            raise kopf.TemporaryError(f"RayService changed meanwhile: {exc}", delay=1) from None
        _set_status(patch, status, st.model_status(
            name=name, namespace=namespace, rs=written or existing, bounds=bounds,
            observed_generation=body.metadata.get("generation"), previous=status, now=ctx.now()))
        users = dependents(name, docs)
        if users and written is not None:
            await reapply(namespace, users, configs, models_idx, rayservices_idx)

    @kopf.on.event(*RAYSERVICES, id="rayservice-status", labels={MODEL_LABEL: kopf.PRESENT},
                   registry=registry)
    @by_kwargs
    async def rayservice_changed(type: str | None, body: kopf.Body, namespace: str,
                                 labels: kopf.Labels, models_idx: kopf.Index[str, Any],
                                 **_: Any) -> None:
        """Copy what KubeRay reports into the owning ModelDeployment's status, if it changed.
        A RayService without status yet is what the create handler already reported."""
        if type == "DELETED" or not body.get("status"):
            return
        doc = _by_name(models_idx.get(namespace, [])).get(labels[MODEL_LABEL])
        owners = {ref.get("uid") for ref in body.metadata.get("ownerReferences") or []}
        if doc is None or doc["metadata"].get("uid") not in owners:
            return
        try:
            md = parse_model(doc)
            bounds = replica_bounds(md.spec, settings.gpu_prices)
        except (ManifestError, CostCeilingError):
            return
        previous = doc.get("status") or {}
        new = st.model_status(
            name=md.metadata.name, namespace=namespace, rs=body, bounds=bounds,
            observed_generation=previous.get("observedGeneration"), previous=previous,
            now=ctx.now())
        delta = st.changed(previous, new)
        if delta:
            await asyncio.to_thread(ctx.kube.patch_status, "modeldeployments", namespace,
                                    md.metadata.name, delta)

    @on_spec(*TENANTS, id="tenant", registry=registry)
    @by_kwargs
    async def reconcile_tenant(body: kopf.Body, namespace: str, name: str, status: kopf.Status,
                               patch: kopf.Patch, models_idx: kopf.Index[str, Any],
                               tenants_idx: kopf.Index[str, Any],
                               rayservices_idx: kopf.Index[Any, Any], **_: Any) -> None:
        """Hash the key from the Secret, set the ledger's limits, and re-render the Serve
        configs of the namespace (only those whose gateway user_config changes are written)."""
        try:
            tenant = parse_tenant(body)
        except ManifestError as exc:
            _invalid(ctx, body, patch, exc.errors)
        digest = await asyncio.to_thread(ctx.hashes.refresh, ctx.kube, tenant)
        ref = tenant.spec.api_key_secret_ref
        key_ok = st.key_condition(digest is not None, namespace, ref.name, ref.key)
        _set_status(patch, status, {"conditions": st.merge_conditions(
            status.get("conditions") or [],
            [st.condition("Valid", True, "SpecValid"), key_ok], ctx.now())})
        if digest is None:
            raise kopf.TemporaryError(key_ok["message"], delay=RETRY_S)
        if ctx.ledger is not None:
            config = tenant_config(tenant, digest)  # its name is the ledger key
            await asyncio.to_thread(ctx.ledger.configure_tenant, config.name,
                                    ledger_limits(config))
        await reapply(namespace, None, await configs_in(namespace, tenants_idx), models_idx,
                      rayservices_idx)

    @kopf.on.event(*TENANTS, id="tenant-deleted", registry=registry)
    @by_kwargs
    async def tenant_deleted(type: str | None, namespace: str, models_idx: kopf.Index[str, Any],
                             tenants_idx: kopf.Index[str, Any],
                             rayservices_idx: kopf.Index[Any, Any], **_: Any) -> None:
        """Drop a deleted Tenant from the Serve configs of its namespace."""
        if type == "DELETED":
            await reapply(namespace, None, await configs_in(namespace, tenants_idx), models_idx,
                          rayservices_idx)

    return registry
