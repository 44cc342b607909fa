"""The e2e flow, step by step, shared by tests/e2e/test_flow.py and the tutorial script:
`kubectl apply` of examples/quickstart.yaml -> the operator's RayService -> its serveConfigV2,
unchanged, on a local Ray through the Serve REST API (KubeRay's part, including the status it
reports back) -> the official `openai` client with the keys from the Secrets. One SQLite ledger
file is shared by the operator (`ledger_url`) and the gateways (`serving_ledger_url`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import yaml

from frugalserve.ledger import Ledger, Usage, open_ledger
from frugalserve.serving.config import ledger_tenant
from tests.e2e.kube import Kube
from tests.e2e.ray_cluster import Ports, RayCluster, cluster_cpus

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
APP = "frugalserve"
"""The Serve application in every rendered serveConfigV2."""
RAYSERVICE = "assistant"
"""The RayService deployed: it serves `assistant` and its fallback `assistant-lite`."""
NAMESPACE = "default"
"""The quickstart's namespace: Tenants are `default/<name>` in the ledger and the gateway."""
GATEWAY = "Gateway"
DOWNGRADED_HEADER = "x-frugalserve-downgraded"
CHAT = [{"role": "user", "content": "What does one million tokens cost?"}]


def serve_config(rayservice: Mapping[str, Any]) -> dict[str, Any]:
    """A RayService's serveConfigV2, parsed."""
    config: dict[str, Any] = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    return config


def gateway_user_config(config: Mapping[str, Any]) -> dict[str, Any]:
    app = next(a for a in config["applications"] if a["name"] == APP)
    gateway = next(d for d in app["deployments"] if d["name"] == GATEWAY)
    user_config: dict[str, Any] = gateway["user_config"]
    return user_config


def cost_micros(prices: Mapping[str, Any], prompt: int, completion: int) -> int:
    """A request's charge as the design states it: list prices in USD per 1M tokens (micro-USD
    per token), rounded up to a whole micro-USD per request."""
    exact = prices["input_per_million_usd"] * prompt + prices["output_per_million_usd"] * completion
    return math.ceil(round(exact, 6))


@dataclass
class Served:
    """One answered request: the model that served it, its usage, the downgrade header."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    downgraded_from: str | None


@dataclass
class Spending:
    """What a tenant was served and refused while spending its budget."""

    served: list[Served] = field(default_factory=list)
    refusals: list[openai.RateLimitError] = field(default_factory=list)

    def micros(self, prices: Mapping[str, Mapping[str, Any]]) -> int:
        """What the served requests cost at the prices of the models that served them."""
        return sum(cost_micros(prices[s.model], s.prompt_tokens, s.completion_tokens)
                   for s in self.served)


class Flow:
    """The operator against the emulator, the quickstart applied, and its `assistant`
    RayService serving on a local Ray cluster of its own."""

    def __init__(self, ports: Ports, ray_env: Mapping[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fs-e2e-"))
        self.ledger_url = f"sqlite:///{self.dir / 'ledger.db'}"
        self.ports, self.ray_env = ports, dict(ray_env or {})
        self.kube = Kube(ledger_url=self.ledger_url, serving_ledger_url=self.ledger_url,
                         metrics_url_template=f"http://127.0.0.1:{ports.serve}/metrics",
                         cost_interval_s=1.0, tenant_interval_s=0.5)
        self.ray: RayCluster | None = None
        self.ledger: Ledger | None = None
        self.applied: list[str] = []

    # -- kubectl apply -> the operator's RayService -------------------------------------------

    def apply_quickstart(self) -> dict[str, Any]:
        """Apply the quickstart; the RayService once its Serve config knows every Tenant."""
        self.kube.start()
        self.applied = self.kube.apply(QUICKSTART)
        tenants = {ledger_tenant(t["metadata"]["namespace"], t["metadata"]["name"])
                   for t in self.kube.list("Tenant")}
        return self.kube.wait_for("RayService", RAYSERVICE, lambda rs: {
            t["name"] for t in gateway_user_config(serve_config(rs))["tenants"]} == tenants)

    def set_budget(self, tenant: str, limit_usd: float) -> dict[str, Any]:
        """`kubectl patch tenant <tenant> --type merge -p '{"spec": {"budget": {"limitUSD":
        ...}}}'`; the RayService once the operator has re-rendered its Serve config with it."""
        self.kube.patch("Tenant", tenant, {"spec": {"budget": {"limitUSD": limit_usd}}})
        micros = round(limit_usd * 1_000_000)
        return self.kube.wait_for("RayService", RAYSERVICE, lambda rs: any(
            t["name"] == ledger_tenant(NAMESPACE, tenant) and t.get("limit_micros") == micros
            for t in gateway_user_config(serve_config(rs))["tenants"]))

    # -- KubeRay's part ------------------------------------------------------------------------

    def start_ray(self, rayservice: Mapping[str, Any]) -> None:
        """A Ray cluster with the CPUs the RayService asks for (head + worker pods)."""
        self.ray = RayCluster(self.ports, cluster_cpus(rayservice), self.ray_env)
        self.ray.start()
        self.ledger = open_ledger(self.ledger_url)

    def deploy(self) -> dict[str, Any]:
        """Deploy the RayService's current serveConfigV2 as is; report Serve's status back
        into the RayService as KubeRay does; Serve's details of the running application."""
        rs = self.kube.get("RayService", RAYSERVICE)
        assert self.ray is not None
        self.ray.deploy(rs["spec"]["serveConfigV2"])
        details = self.ray.wait_running(APP)
        self.kube.patch("RayService", RAYSERVICE, kuberay_status(rs, details), sub="status")
        return details

    def replicas(self) -> dict[str, list[tuple[str, str, int, float]]]:
        """Every deployment's replicas as (replica id, actor id, pid, start time)."""
        assert self.ray is not None
        app = self.ray.applications()[APP]
        return {name: sorted((r["replica_id"], r["actor_id"], r["pid"], r["start_time_s"])
                             for r in d["replicas"]) for name, d in app["deployments"].items()}

    # -- clients -------------------------------------------------------------------------------

    def api_key(self, tenant: str) -> str:
        """The tenant's key, read from the Secret its spec names (as a user would)."""
        ref = self.kube.get("Tenant", tenant)["spec"]["apiKeySecretRef"]
        secret = self.kube.get("Secret", ref["name"])
        return base64.b64decode(secret["data"][ref.get("key", "api-key")]).decode()

    @property
    def base_url(self) -> str:
        assert self.ray is not None
        return f"{self.ray.base_url}/v1"

    def client(self, tenant: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key(tenant), max_retries=0)

    def prices(self) -> dict[str, dict[str, Any]]:
        """Each model's prices in the deployed gateway user_config."""
        rs = self.kube.get("RayService", RAYSERVICE)
        prices: dict[str, dict[str, Any]] = gateway_user_config(serve_config(rs))["prices"]
        return prices

    def usage(self, tenant: str, timeout_s: float = 10.0) -> Usage:
        """The Tenant's ledger usage (as `default/<tenant>`) once no request of it is in
        flight."""
        assert self.ledger is not None
        deadline = time.monotonic() + timeout_s
        key = ledger_tenant(NAMESPACE, tenant)
        while (usage := self.ledger.usage(key)).in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        return usage

    def spend(self, tenant: str, model: str, *, burst: int, max_tokens: int,
              drain: bool) -> Spending:
        """`burst` concurrent chat completions of `max_tokens` each; then, if `drain`, one at a
        time without max_tokens (the gateway caps each at what the budget still pays for) until
        the tenant is refused."""
        spending = Spending()
        asyncio.run(self._burst(tenant, model, burst, max_tokens, spending))
        if drain:
            refused = len(spending.refusals)
            with self.client(tenant) as client:
                while len(spending.refusals) == refused:
                    assert len(spending.served) < burst + 50, "the budget never ran out"
                    self.ask(client, model, None, spending)
        return spending

    async def _burst(self, tenant: str, model: str, n: int, max_tokens: int,
                     spending: Spending) -> None:
        async with openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key(tenant),
                                      max_retries=0, timeout=300) as client:
            async def one() -> None:
                try:
                    raw = await client.chat.completions.with_raw_response.create(
                        model=model, messages=CHAT, max_tokens=max_tokens)
                except openai.RateLimitError as exc:
                    spending.refusals.append(exc)
                    return
                spending.served.append(_served(raw.parse(), raw.headers))
            await asyncio.gather(*(one() for _ in range(n)))

    @staticmethod
    def ask(client: openai.OpenAI, model: str, max_tokens: int | None,
             spending: Spending) -> None:
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=CHAT,
                **({} if max_tokens is None else {"max_tokens": max_tokens}))
        except openai.RateLimitError as exc:
            spending.refusals.append(exc)
            return
        spending.served.append(_served(raw.parse(), raw.headers))

    def close(self) -> None:
        """Stop the operator and the emulator, then the Ray cluster; remove the state dir."""
        try:
            self.kube.close()
        finally:
            if self.ledger is not None:
                self.ledger.close()
            if self.ray is not None:
                self.ray.stop()
            shutil.rmtree(self.dir, ignore_errors=True)


def _served(completion: Any, headers: Mapping[str, str]) -> Served:
    return Served(completion.model, completion.usage.prompt_tokens,
                  completion.usage.completion_tokens, headers.get(DOWNGRADED_HEADER))


def kuberay_status(rs: Mapping[str, Any], app: Mapping[str, Any]) -> dict[str, Any]:
    """The RayService status KubeRay reports for a running Serve application: the application
    and deployment statuses Serve gives, and one ready worker pod per running model replica
    (the rendered RayService puts each model replica on a worker pod of its own)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    deployments = app["deployments"]
    workers = sum(1 for name, d in deployments.items() if name != GATEWAY
                  for r in d["replicas"] if r["state"] == "RUNNING")
    return {"status": {
        "serviceStatus": "Running",
        "observedGeneration": rs["metadata"]["generation"],
        "conditions": [{"type": "Ready", "status": "True", "reason": "RunningAndHealthy",
                        "message": "", "lastTransitionTime": now}],
        "activeServiceStatus": {
            "rayClusterName": f"{rs['metadata']['name']}-local",
            "rayClusterStatus": {"desiredWorkerReplicas": workers,
                                 "readyWorkerReplicas": workers},
            "applicationStatuses": {APP: {
                "status": app["status"],
                "message": app.get("message") or "",
                "serveDeploymentStatuses": {
                    name: {"status": d["status"], "message": d.get("message") or ""}
                    for name, d in sorted(deployments.items())},
            }},
        },
    }}


@contextlib.contextmanager
def running_flow(ports: Ports, ray_env: Mapping[str, str] | None = None) -> Iterator[Flow]:
    """The quickstart applied, its RayService deployed and serving; everything stopped after."""
    flow = Flow(ports, ray_env)
    try:
        rs = flow.apply_quickstart()
        flow.start_ray(rs)
        flow.deploy()
        yield flow
    finally:
        flow.close()
