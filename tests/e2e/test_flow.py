"""One flow end to end, as a platform engineer would try it: `kubectl apply -f
examples/quickstart.yaml` against the Kubernetes API emulator with the real operator running;
the RayService it writes; its serveConfigV2 deployed unchanged to a local Ray Serve (Serve REST
API, token auth); the official `openai` client with the keys from the Secrets. The tests run in
file order on one flow (module fixture); the last one repeats the flow with budget enforcement
switched off and shows that the budget check fails there."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from frugalserve.ledger import Usage
from tests.e2e.conftest import CONTROL_PORTS, UNSAFE_ENV
from tests.e2e.flow import (
    APP,
    CHAT,
    GATEWAY,
    QUICKSTART,
    RAYSERVICE,
    Flow,
    Spending,
    cost_micros,
    gateway_user_config,
    running_flow,
    serve_config,
)
from tests.e2e.kube import documents

pytestmark = pytest.mark.e2e
BUDGET_STEP_MICROS = 3000
"""The reject tenant's budget is patched to what it has spent plus this (about 13 requests of
32 tokens at the quickstart's list prices)."""
SPEND_TOKENS, LAST_TOKENS = 200, 400
"""max_tokens of the downgrade tenant's requests: while spending, and the last one."""


def contains(actual: Any, expected: Any) -> bool:
    """Whether actual has every value of expected (Serve reports options with defaults added)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and contains(actual[k], v) for k, v in expected.items())
    return bool(actual == expected)


def tenant_status_matches(flow: Flow, tenant: str, usage: Usage) -> dict[str, Any]:
    """The Tenant's status once the operator's timer has copied this ledger usage into it."""
    want = {"spentUSD": usage.spent_micros / 1e6,
            "remainingUSD": None if usage.remaining_micros is None
            else usage.remaining_micros / 1e6,
            "tokensUsed": {"prompt": usage.tokens_prompt, "completion": usage.tokens_completion}}
    obj = flow.kube.wait_for("Tenant", tenant, lambda t: all(
        (t.get("status") or {}).get(k) == v for k, v in want.items()))
    status: dict[str, Any] = obj["status"]
    return status


def budget_violations(flow: Flow, spending: Spending, before: Usage, after: Usage) -> list[str]:
    """How the tenant's spending broke its budget, if it did: every served request charged at
    its price (ledger == responses' usage x price), spend <= limit, and refused only when the
    rest of the budget cannot pay for the prompt and one token."""
    assert after.limit_micros is not None
    prices = flow.prices()
    served = spending.micros(prices)
    charged = after.spent_micros - before.spent_micros
    prompt = max(s.prompt_tokens for s in spending.served)
    one_more = cost_micros(prices[spending.served[0].model], prompt, 1)
    found = []
    if charged != served:
        found.append(f"ledger charged {charged} micro-USD for {served} served")
    if before.spent_micros + served > after.limit_micros:
        found.append(f"served {before.spent_micros + served} micro-USD in all, over its "
                     f"limit of {after.limit_micros}")
    if after.spent_micros > after.limit_micros:
        found.append(f"ledger spend {after.spent_micros} over the limit {after.limit_micros}")
    if not spending.refusals:
        found.append("never refused")
    elif after.limit_micros - after.spent_micros >= one_more:
        found.append(f"refused with {after.limit_micros - after.spent_micros} micro-USD left, "
                     f"enough for one more token ({one_more})")
    return found


def test_rayservice_from_the_manifests_serves_unchanged(flow: Flow, rayservice_errors) -> None:
    """The operator wrote a valid RayService from the applied manifests; Serve runs exactly its
    serveConfigV2 (ledger = the operator's serving_ledger_url); KubeRay's report of it makes
    the ModelDeployment Ready with its replicas."""
    docs = list(documents(QUICKSTART))
    assert len(flow.applied) == len(docs) == 6
    rs = flow.kube.get("RayService", RAYSERVICE)
    assert rayservice_errors(rs) == []
    assert rs["metadata"]["ownerReferences"][0]["uid"] == \
        flow.kube.get("ModelDeployment", RAYSERVICE)["metadata"]["uid"]
    (app,) = serve_config(rs)["applications"]
    assert app["args"]["ledger_url"] == flow.ledger_url
    assert flow.ray is not None
    deployed = flow.ray.applications()[APP]
    assert deployed["deployed_app_config"]["args"] == app["args"]
    assert deployed["deployed_app_config"]["import_path"] == app["import_path"]
    for spec in app["deployments"]:
        config = deployed["deployments"][spec["name"]]["deployment_config"]
        assert contains(config, {k: v for k, v in spec.items() if k != "name"}), spec["name"]
    assert {m.id for m in flow.client("demo").models.list()} == {"assistant", "assistant-lite"}
    md = flow.kube.wait_for("ModelDeployment", RAYSERVICE, lambda o: o["status"]["replicas"][
        "ready"] == 2)
    ready = next(c for c in md["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


def test_completions_are_charged_at_list_prices(flow: Flow) -> None:
    before = flow.usage("demo")
    with flow.client("demo") as client:
        chat = client.chat.completions.create(model="assistant", messages=CHAT,
                                              max_tokens=16)
        text = client.completions.create(model="assistant", prompt="Hello, world!",
                                         max_tokens=8)
    assert chat.model == text.model == "assistant"
    assert chat.choices[0].message.content and text.choices[0].text
    assert chat.usage is not None and text.usage is not None
    prices = flow.prices()["assistant"]
    assert (prices["input_per_million_usd"], prices["output_per_million_usd"]) == (2.0, 6.0)
    after = flow.usage("demo")
    assert after.tokens_prompt - before.tokens_prompt == \
        chat.usage.prompt_tokens + text.usage.prompt_tokens
    assert after.tokens_completion - before.tokens_completion == \
        chat.usage.completion_tokens + text.usage.completion_tokens
    assert after.spent_micros - before.spent_micros == sum(
        cost_micros(prices, u.prompt_tokens, u.completion_tokens) for u in (chat.usage, text.usage))
    tenant_status_matches(flow, "demo", after)


def test_live_cost_reaches_model_deployment_status(flow: Flow) -> None:
    """While tokens flow, the cost timer (scraping the gateway's /metrics) publishes tokens per
    second, and $/hour and $/1M tokens as the design computes them: ready replicas x
    gpusPerReplica x gpuHourUSD, over tokens per hour. The quickstart runs on CPU
    (gpusPerReplica: 0), so both are exactly $0, not absent."""
    traffic = threading.Thread(target=flow.spend, args=("demo", "assistant"),
                               kwargs={"burst": 8, "max_tokens": 48, "drain": False})
    traffic.start()
    try:
        md = flow.kube.wait_for("ModelDeployment", RAYSERVICE,
                                lambda o: (o["status"].get("tokensPerSecond") or 0) > 0)
    finally:
        traffic.join()
    status = md["status"]
    assert status["replicas"]["ready"] == 2
    assert md["spec"]["resources"]["gpusPerReplica"] == 0
    assert status["hourlyCostUSD"] == 0.0
    assert status["liveCostPerMillionTokensUSD"] == 0.0


def test_downgrade_tenant_is_served_by_the_fallback(flow: Flow) -> None:
    """demo-lite (`onExceeded: downgrade`) is served by assistant while its budget pays for a
    request's worst case there, then by assistant-lite; never refused, within its limit."""
    before = flow.usage("demo-lite")
    prices = flow.prices()
    spending = Spending()
    with flow.client("demo-lite") as client:
        flow.ask(client, "assistant", SPEND_TOKENS, spending)
        prompt = spending.served[0].prompt_tokens
        # Spend on assistant while what is left still pays for the last request's worst case
        # on the fallback; that request's worst case on assistant is more than what is left.
        last_on_fallback = cost_micros(prices["assistant-lite"], prompt, LAST_TOKENS)
        enough = cost_micros(prices["assistant"], prompt, SPEND_TOKENS) + last_on_fallback
        while (left := flow.usage("demo-lite").remaining_micros or 0) >= enough:
            flow.ask(client, "assistant", SPEND_TOKENS, spending)
        assert cost_micros(prices["assistant"], prompt, LAST_TOKENS) > left >= last_on_fallback
        flow.ask(client, "assistant", LAST_TOKENS, spending)
    assert spending.refusals == []
    assert {(s.model, s.downgraded_from) for s in spending.served[:-1]} == {("assistant", None)}
    last = spending.served[-1]
    assert (last.model, last.downgraded_from) == ("assistant-lite", "assistant")
    after = flow.usage("demo-lite")
    assert after.spent_micros - before.spent_micros == spending.micros(prices)
    assert after.limit_micros is not None and after.spent_micros <= after.limit_micros
    tenant_status_matches(flow, "demo-lite", after)


def test_budget_patch_applies_in_place_and_reject_tenant_stops_at_it(flow: Flow) -> None:
    """`kubectl patch tenant demo` lowers its budget: only the gateway's user_config changes in
    the RayService; redeploying it (as KubeRay does) restarts no replica; the tenant is then
    refused with 429 insufficient_quota at exactly the new limit."""
    before = flow.usage("demo")
    old = flow.kube.get("RayService", RAYSERVICE)
    replicas = flow.replicas()
    limit = before.spent_micros + BUDGET_STEP_MICROS
    assert before.limit_micros is not None and limit < before.limit_micros
    new = flow.set_budget("demo", limit / 1e6)

    expected = serve_config(old)
    demo = next(t for t in gateway_user_config(expected)["tenants"] if t["name"] == "default/demo")
    demo["limit_micros"] = limit
    assert serve_config(new) == expected
    assert {k: v for k, v in new["spec"].items() if k != "serveConfigV2"} == \
        {k: v for k, v in old["spec"].items() if k != "serveConfigV2"}

    details = flow.deploy()
    assert details["deployments"][GATEWAY]["deployment_config"]["user_config"] == \
        gateway_user_config(serve_config(new))
    assert flow.replicas() == replicas

    spending = flow.spend("demo", "assistant", burst=32, max_tokens=32, drain=True)
    after = flow.usage("demo")
    assert after.limit_micros == limit
    assert budget_violations(flow, spending, before, after) == []
    assert {e.status_code for e in spending.refusals} == {429}
    assert {e.body["code"] for e in spending.refusals} == {"insufficient_quota"}
    tenant_status_matches(flow, "demo", after)


def test_negative_control_without_reservations_overspends() -> None:
    """The same flow on a Ray whose environment switches the gateways to check-then-charge
    admission: the same burst is served beyond the budget, and the budget check above sees it.
    (Runs after the module's flow has been used, beside its still running cluster.)"""
    with running_flow(CONTROL_PORTS, UNSAFE_ENV) as control:
        before = control.usage("demo")
        limit = before.spent_micros + BUDGET_STEP_MICROS
        control.set_budget("demo", limit / 1e6)
        control.deploy()
        spending = control.spend("demo", "assistant", burst=32, max_tokens=32, drain=True)
        after = control.usage("demo")
        violations = budget_violations(control, spending, before, after)
    assert any("over its limit" in v for v in violations), violations
