"""The operator's periodic jobs, one loop each for all objects (not per-object kopf timers,
which would force a finalizer onto every object): live cost into ModelDeployment.status, the
ledger's usage into Tenant.status, and Tenants' API key Secrets read again so that a rotated
or revoked key reaches the gateways. Each tick runs in a thread and writes only changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from frugalserve.api.manifests import ManifestError
from frugalserve.ledger import UnknownTenant
from frugalserve.operator import status as st
from frugalserve.operator.context import Context
from frugalserve.operator.reconcile import parse_model, parse_tenant
from frugalserve.pricing.cost import gpu_hour_usd
from frugalserve.serving.config import ledger_tenant

logger = logging.getLogger(__name__)
Docs = list[Mapping[str, Any]]


def _key(doc: Mapping[str, Any]) -> tuple[str, str]:
    return doc["metadata"]["namespace"], doc["metadata"]["name"]


def cost_tick(ctx: Context, docs: Docs) -> None:
    """hourlyCostUSD, tokensPerSecond, liveCostPerMillionTokensUSD of every valid
    ModelDeployment whose rate could be read, written where changed (blocking)."""
    models, statuses = {}, {}
    for doc in docs:
        try:
            models[_key(doc)] = parse_model(doc)
        except ManifestError:
            continue
        statuses[_key(doc)] = doc.get("status") or {}
    rates = ctx.rate(sorted(models))
    for key, tokens_per_second in sorted(rates.items()):
        spec, previous = models[key].spec, statuses[key]
        ready = (previous.get("replicas") or {}).get("ready", 0)
        new = st.cost_status(ready, spec.resources.gpus_per_replica,
                             gpu_hour_usd(spec, ctx.settings.gpu_prices), tokens_per_second)
        delta = st.changed(previous, new)
        if delta:
            ctx.kube.patch_status("modeldeployments", *key, delta)


def tenant_tick(ctx: Context, docs: Docs) -> None:
    """Every valid, configured Tenant's usage from the ledger, written where changed
    (blocking)."""
    if ctx.ledger is None:
        return
    for doc in sorted(docs, key=_key):
        try:
            tenant = parse_tenant(doc)
            usage = ctx.ledger.usage(ledger_tenant(tenant.metadata.namespace,
                                                   tenant.metadata.name))
        except (ManifestError, UnknownTenant):
            continue
        previous = doc.get("status") or {}
        delta = st.changed(previous, st.tenant_status(usage, tenant.spec.budget.on_exceeded))
        if delta:
            ctx.kube.patch_status("tenants", *_key(doc), delta)


def key_tick(ctx: Context, docs: Docs) -> set[str]:
    """Read every valid Tenant's API key Secret again; where the key changed (rotated, revoked
    or restored) set the Tenant's Ready condition. Returns the namespaces whose Serve configs
    must be rendered again (blocking)."""
    stale = set()
    for doc in sorted(docs, key=_key):
        try:
            tenant = parse_tenant(doc)
        except ManifestError:
            continue
        if not ctx.hashes.reread(ctx.kube, tenant):
            continue
        namespace, name = _key(doc)
        stale.add(namespace)
        ref, previous = tenant.spec.api_key_secret_ref, doc.get("status") or {}
        resolved = ctx.hashes.get(ctx.kube, tenant) is not None
        conditions = st.merge_conditions(
            previous.get("conditions") or [],
            [st.key_condition(resolved, namespace, ref.name, ref.key)], ctx.now())
        delta = st.changed(previous, {"conditions": conditions})
        if delta:
            ctx.kube.patch_status("tenants", namespace, name, delta)
    return stale


async def every(interval_s: float, job: Callable[[], Awaitable[None]]) -> None:
    """Await job() every interval until cancelled; a failing job is logged and the next one
    runs on schedule."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await job()
        except Exception:
            logger.exception("periodic job %s failed", job.__name__)
