"""Pure status arithmetic: ModelDeployment conditions from the owned RayService, Tenant status
from the ledger, live cost from metrics. Deterministic (sorted, rounded) so that an unchanged
world yields an identical status and the handlers write nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from frugalserve.api.models import OnExceeded, TenantState
from frugalserve.ledger import Usage
from frugalserve.operator.render import SERVE_PORT
from frugalserve.pricing.cost import MICROS_PER_USD, ReplicaBounds, hourly_cost_usd

BAD_APP_STATES = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})


def endpoint(name: str, namespace: str) -> str:
    """The in-cluster OpenAI-compatible base URL of KubeRay's serve Service."""
    return f"http://{name}-serve-svc.{namespace}.svc:{SERVE_PORT}/v1"


def condition(type_: str, ok: bool, reason: str, message: str = "") -> dict[str, Any]:
    """A condition without its transition time (set by `merge_conditions`)."""
    return {"type": type_, "status": "True" if ok else "False", "reason": reason,
            "message": message}


def key_condition(resolved: bool, namespace: str, secret: str, key: str) -> dict[str, Any]:
    """A Tenant's Ready condition: whether its API key Secret resolves."""
    if resolved:
        return condition("Ready", True, "KeyResolved")
    return condition("Ready", False, "SecretMissing",
                     f"spec.apiKeySecretRef: no key {key!r} in Secret {namespace}/{secret}")


def merge_conditions(
    previous: Sequence[Mapping[str, Any]], updates: Sequence[dict[str, Any]], now: str
) -> list[dict[str, Any]]:
    """previous with updates applied, sorted by type; lastTransitionTime moves only when a
    condition's status changes."""
    by_type = {c["type"]: dict(c) for c in previous}
    for new in updates:
        old = by_type.get(new["type"])
        same = old is not None and old.get("status") == new["status"]
        stamp = old.get("lastTransitionTime") if same and old is not None else None
        by_type[new["type"]] = {**new, "lastTransitionTime": stamp or now}
    return [by_type[t] for t in sorted(by_type)]


def _unhealthy(rs_status: Mapping[str, Any]) -> list[str]:
    """`app: STATUS message` lines for failed Serve applications and deployments, sorted."""
    apps = (rs_status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
    bad = []
    for name, app in sorted(apps.items()):
        if app.get("status") in BAD_APP_STATES:
            bad.append(f"{name}: {app['status']} {app.get('message', '')}".strip())
        for dep, dstatus in sorted((app.get("serveDeploymentStatuses") or {}).items()):
            if dstatus.get("status") == "UNHEALTHY":
                bad.append(f"{name}/{dep}: UNHEALTHY {dstatus.get('message', '')}".strip())
    return bad


def _serving(rs_status: Mapping[str, Any]) -> bool:
    """KubeRay reports the Serve application up (Ready condition, or serviceStatus Running)."""
    for cond in rs_status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return rs_status.get("serviceStatus") == "Running"


def _upgrading(rs: Mapping[str, Any]) -> bool:
    """A new cluster is being prepared, or KubeRay has not yet seen the latest spec."""
    status = rs.get("status") or {}
    conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    pending = (status.get("pendingServiceStatus") or {}).get("rayClusterName")
    generation = (rs.get("metadata") or {}).get("generation")
    seen = status.get("observedGeneration")
    stale = generation is not None and seen is not None and seen < generation
    return conds.get("UpgradeInProgress") == "True" or bool(pending) or stale


def rayservice_conditions(rs: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Ready, Progressing and Degraded from the owned RayService (None: not created yet)."""
    if rs is None:
        return [condition("Degraded", False, "AsExpected"),
                condition("Progressing", True, "CreatingRayService"),
                condition("Ready", False, "RayServicePending")]
    status = rs.get("status") or {}
    bad = _unhealthy(status)
    serving, upgrading = _serving(status), _upgrading(rs)
    degraded = condition("Degraded", bool(bad), "ServeUnhealthy" if bad else "AsExpected",
                         "; ".join(bad))
    if upgrading:
        progressing = condition("Progressing", True, "UpgradeInProgress")
    elif not serving and not bad:
        progressing = condition("Progressing", True, "WaitingForServe")
    else:
        progressing = condition("Progressing", False, "Stable")
    ready_reason = "ServeRunning" if serving else ("ServeUnhealthy" if bad else "WaitingForServe")
    return [degraded, progressing, condition("Ready", serving, ready_reason)]


def replicas(rs: Mapping[str, Any] | None) -> dict[str, int]:
    """Desired and ready worker replicas of the RayService's active cluster."""
    active = ((rs or {}).get("status") or {}).get("activeServiceStatus") or {}
    cluster = active.get("rayClusterStatus") or {}
    return {"desired": int(cluster.get("desiredWorkerReplicas") or 0),
            "ready": int(cluster.get("readyWorkerReplicas") or 0)}


def cost_capped(bounds: ReplicaBounds) -> dict[str, Any]:
    """The CostCapped condition: True when maxHourlyCostUSD lowered maxReplicas."""
    if bounds.capped:
        return condition("CostCapped", True, "MaxHourlyCost",
                         f"maxHourlyCostUSD pays for {bounds.affordable} replica(s); "
                         f"maxReplicas capped at {bounds.max_replicas}")
    return condition("CostCapped", False, "WithinBudget")


def model_status(
    *,
    name: str,
    namespace: str,
    rs: Mapping[str, Any] | None,
    bounds: ReplicaBounds,
    observed_generation: int | None,
    previous: Mapping[str, Any],
    now: str,
) -> dict[str, Any]:
    """The operator-observed part of ModelDeployment.status (cost fields excluded)."""
    updates = [condition("Valid", True, "SpecValid"), cost_capped(bounds),
               *rayservice_conditions(rs)]
    return {
        "conditions": merge_conditions(previous.get("conditions") or [], updates, now),
        "observedGeneration": observed_generation,
        "replicas": replicas(rs),
        "endpoint": endpoint(name, namespace),
        "rayService": name,
    }


def invalid_status(
    errors: Sequence[str], generation: int | None, previous: Mapping[str, Any], now: str
) -> dict[str, Any]:
    """Valid=False naming every bad field; Ready=False while the spec cannot be served."""
    updates = [condition("Valid", False, "InvalidSpec", "; ".join(errors)),
               condition("Ready", False, "InvalidSpec")]
    return {
        "conditions": merge_conditions(previous.get("conditions") or [], updates, now),
        "observedGeneration": generation,
    }


def cost_status(
    ready: int, gpus_per_replica: int, gpu_hour: float, tokens_per_second: float | None
) -> dict[str, Any]:
    """hourlyCostUSD, tokensPerSecond and liveCostPerMillionTokensUSD (None without traffic)."""
    hourly = hourly_cost_usd(ready, gpus_per_replica, gpu_hour)
    live = None
    if tokens_per_second:
        live = round(hourly / (tokens_per_second * 3600) * 1e6, 4)
    return {
        "hourlyCostUSD": round(hourly, 4),
        "tokensPerSecond": None if tokens_per_second is None else round(tokens_per_second, 2),
        "liveCostPerMillionTokensUSD": live,
    }


def _usd(micros: int | None) -> float | None:
    return None if micros is None else round(micros / MICROS_PER_USD, 6)


def tenant_state(usage: Usage, on_exceeded: OnExceeded) -> TenantState:
    """Exhausted (or Downgraded under `downgrade`) once a money or token budget is used up."""
    remaining = [r for r in (usage.remaining_micros, usage.remaining_tokens) if r is not None]
    if any(r <= 0 for r in remaining):
        return (TenantState.DOWNGRADED if on_exceeded is OnExceeded.DOWNGRADE
                else TenantState.EXHAUSTED)
    return TenantState.ACTIVE


def tenant_status(usage: Usage, on_exceeded: OnExceeded) -> dict[str, Any]:
    """Tenant.status fields from one ledger snapshot."""
    start = usage.period_start.isoformat().replace("+00:00", "Z")
    return {
        "spentUSD": _usd(usage.spent_micros),
        "tokensUsed": {"prompt": usage.tokens_prompt, "completion": usage.tokens_completion},
        "remainingUSD": _usd(usage.remaining_micros),
        "periodStart": start,
        "state": tenant_state(usage, on_exceeded).value,
    }


def changed(previous: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of new whose values differ from previous (a status merge patch, top level)."""
    return {k: v for k, v in sorted(new.items()) if previous.get(k) != v}
