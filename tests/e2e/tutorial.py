"""Writes docs/tutorial.md from a real run of the e2e flow:
`.venv/bin/python -m tests.e2e.tutorial`.

Every output in the tutorial is captured here while it happens: `kubectl apply` and `kubectl
patch` go through the Kubernetes API emulator with the real operator running (tests/e2e/kube.py),
`kubectl get` tables are printed from the stored objects with the CRDs' printer columns
(tests/e2e/kubectl.py), the RayService's serveConfigV2 is deployed unchanged to a local Ray
(tests/e2e/ray_cluster.py), and the Python snippets shown are the ones executed (only their base
URL is pointed at that cluster's port)."""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import textwrap
import threading
from datetime import UTC, datetime

from tests.e2e.flow import QUICKSTART, RAYSERVICE, ROOT, Flow
from tests.e2e.kubectl import get, go_number
from tests.e2e.ray_cluster import Ports

OUT = ROOT / "docs" / "tutorial.md"
PORTS = Ports(26600)
SHOWN_URL = "http://127.0.0.1:8000/v1"
"""The base URL in the snippets: KubeRay's serve Service, port-forwarded."""
CRDS = {"ModelDeployment": ROOT / "crds" / "frugalserve.io_modeldeployments.yaml",
        "Tenant": ROOT / "crds" / "frugalserve.io_tenants.yaml",
        "RayService": ROOT / "tests" / "fixtures" / "ray.io_rayservices.yaml"}
NEW_LIMIT_USD = 0.005


class Tutorial:
    """Markdown with the outputs of what it runs."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.parts: list[str] = []

    def text(self, markdown: str) -> None:
        self.parts.append(textwrap.dedent(markdown).strip())

    def shell(self, command: str, output: str) -> None:
        block = f"$ {command}" + (f"\n{output.rstrip()}" if output.strip() else "")
        self.parts.append(f"```console\n{block}\n```")

    def kubectl_get(self, *kinds: str) -> None:
        short = {"ModelDeployment": "md", "Tenant": "tn", "RayService": "rayservice"}
        now = datetime.now(UTC)
        tables = [(CRDS[k], self.flow.kube.list(k)) for k in kinds]
        self.shell(f"kubectl get {','.join(short[k] for k in kinds)}", get(tables, now))

    def python(self, source: str) -> str:
        """Run the snippet (against this run's cluster), show it with what it printed, and
        return that."""
        source = textwrap.dedent(source).strip()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(source.replace(SHOWN_URL, self.flow.base_url), {})  # noqa: S102
        self.parts.append(f"```python\n{source}\n```")
        self.parts.append(f"```text\n{printed.getvalue().rstrip()}\n```")
        return printed.getvalue()

    def markdown(self) -> str:
        return "\n\n".join(self.parts) + "\n"


def replica_lines(flow: Flow) -> str:
    return "\n".join(f"{name} {replica_id} pid {pid}"
                     for name, replicas in sorted(flow.replicas().items())
                     for replica_id, _, pid, _ in replicas)


def write(flow: Flow) -> str:
    t = Tutorial(flow)
    t.text("""
        # Tutorial: a model, two tenants, and a budget that holds

        From `helm install` to `kubectl get md,tn` showing live cost and spend: deploy the
        quickstart's two small models and two tenants, call them with the official `openai`
        client, lower a budget on the fly, and watch one tenant refused at exactly its budget
        and the other moved to the cheaper model.

        > **How this page was made.** It is written by `.venv/bin/python -m tests.e2e.tutorial`
        > from a real run of the end-to-end test's flow, not by hand. There is no cluster in
        > that run: `kubectl apply`, `patch` and `get` go through the Kubernetes API emulator the
        > operator's tests use, with the real frugalserve operator running against it; the
        > `kubectl get` tables are printed from the stored objects with the CRDs' printer
        > columns, as kubectl prints them. KubeRay's part is played by the script: it deploys
        > the RayService's `serveConfigV2`, unchanged, to a local Ray (CPU only) through the
        > Serve REST API, as KubeRay does, and writes Serve's status back into the RayService.
        > The Python snippets are the code that ran (their base URL pointed at that local Ray).
        > The Helm commands below did not run here; they have no output on this page.
        """)
    t.text("""
        ## 1. Install

        Prerequisites (details in [install.md](install.md)): Kubernetes 1.26+, Helm 3.8+, and
        the KubeRay operator, which turns RayServices into Ray clusters:

        ```sh
        helm repo add kuberay https://ray-project.github.io/kuberay-helm/
        helm install kuberay-operator kuberay/kuberay-operator \\
          --namespace kuberay-system --create-namespace
        helm install frugalserve charts/frugalserve \\
          --namespace frugalserve-system --create-namespace
        kubectl -n frugalserve-system rollout status deployment/frugalserve-operator
        ```

        The chart installs the `ModelDeployment` (`md`) and `Tenant` (`tn`) CRDs, the operator
        and a Redis for the budget ledger. (In this run the ledger is one SQLite file that the
        operator and the gateways share.)
        """)

    t.text("""
        ## 2. Apply two models and two tenants

        [`examples/quickstart.yaml`](../examples/quickstart.yaml) holds a Mixture-of-Experts
        model `assistant` ($2 in / $6 out per 1M tokens) that falls back to an int8 dense
        `assistant-lite` ($0.20 / $0.60), both builtin and small enough for a CPU
        (`gpusPerReplica: 0`); and two tenants with their keys in Secrets: `demo` ($0.05 a day,
        refused when it runs out) and `demo-lite` ($0.01 a day, downgraded to the fallback).
        """)
    t.shell(f"kubectl apply -f {QUICKSTART.relative_to(ROOT)}", "\n".join(flow.applied))
    t.text("""
        The operator hashes each tenant's key (only the SHA-256 leaves the Secret), sets the
        tenants' budgets in the ledger, and writes one RayService per ModelDeployment. The one
        for `assistant` serves it and its fallback behind one gateway; its `serveConfigV2` is
        the Serve application KubeRay deploys:
        """)
    rs = flow.kube.get("RayService", RAYSERVICE)
    t.shell(f"kubectl get rayservice {RAYSERVICE} -o jsonpath='{{.spec.serveConfigV2}}'",
            rs["spec"]["serveConfigV2"])
    t.text("""
        Tenants and prices are the gateway's `user_config`: Serve applies a change of it to
        the running replicas in place. (`ledger_url` here is this run's SQLite file; in a
        cluster it is the chart's Redis.)
        """)

    flow.start_ray(rs)
    flow.deploy()
    t.text("""
        ## 3. Serving

        KubeRay starts a Ray cluster, deploys the application and reports it running; the
        operator copies that into the ModelDeployment (READY, REPLICAS):
        """)
    t.kubectl_get("RayService")
    t.kubectl_get("ModelDeployment", "Tenant")
    t.text("""
        `assistant-lite` has a RayService of its own that this run did not deploy (one local
        Ray serves `assistant`'s, which includes `assistant-lite` as its fallback), so it is
        not READY here. In a cluster, port-forward KubeRay's serve Service to reach the
        OpenAI-compatible API (`status.endpoint` of the ModelDeployment), and read a tenant's
        key from its Secret:
        """)
    t.text("""
        ```sh
        kubectl port-forward svc/assistant-serve-svc 8000:8000
        ```
        """)
    key = flow.api_key("demo")
    t.shell("kubectl get secret demo-key -o jsonpath='{.data.api-key}' | base64 -d", key)

    t.text("""
        ## 4. Call it with the `openai` client

        Builtin models have seeded random weights, so the text is noise; the accounting is
        real. Every request is priced at admission and charged what it used:
        """)
    t.python(f"""
        from openai import OpenAI

        client = OpenAI(base_url="{SHOWN_URL}", api_key="{key}")
        reply = client.chat.completions.create(
            model="assistant", max_tokens=16,
            messages=[{{"role": "user", "content": "What does one million tokens cost?"}}])
        usage = reply.usage
        print(reply.model, usage.prompt_tokens, "prompt and", usage.completion_tokens,
              "completion tokens, at list price:",
              2 * usage.prompt_tokens + 6 * usage.completion_tokens, "micro-USD")
        """)
    spent = flow.usage("demo").spent_micros
    flow.kube.wait_for("Tenant", "demo", lambda o: (o.get("status") or {}).get(
        "spentUSD") == spent / 1e6)
    t.text("The ledger charged exactly that; the operator shows it in the Tenant's status:")
    t.kubectl_get("Tenant")

    t.text("""
        ## 5. Lower a budget on the fly

        Patch the tenant; the operator sets the new limit in the ledger and re-renders the
        RayService, where only the gateway's `user_config` changes:
        """)
    before = rs["spec"]["serveConfigV2"]
    replicas_before = replica_lines(flow)
    after = flow.set_budget("demo", NEW_LIMIT_USD)["spec"]["serveConfigV2"]
    patch = json.dumps({"spec": {"budget": {"limitUSD": NEW_LIMIT_USD}}})
    t.shell(f"kubectl patch tenant demo --type merge -p '{patch}'", "tenant.frugalserve.io/demo "
            "patched")
    diff = difflib.unified_diff(before.splitlines(), after.splitlines(),
                                "serveConfigV2 before the patch", "after", n=1, lineterm="")
    t.text("What changed in the RayService's `serveConfigV2`:")
    t.parts.append("```diff\n" + "\n".join(diff) + "\n```")
    flow.deploy()
    replicas_after = replica_lines(flow)
    assert replicas_after == replicas_before, (replicas_before, replicas_after)
    t.text("""
        KubeRay applies the new config to the running application. No replica restarts: Serve's
        REST API (`GET /api/serve/applications/` with the cluster's Ray token) lists the same
        replicas in the same processes before and after:
        """)
    t.parts.append(f"```text\n{replicas_after}\n```")

    t.text("""
        ## 6. The reject tenant stops at its budget

        Without `max_tokens`, the gateway caps each request at what the rest of the budget
        pays for, so the tenant can spend its budget to the last micro-dollar, and no further:
        """)
    t.python(f"""
        import openai

        client = openai.OpenAI(base_url="{SHOWN_URL}", api_key="{key}", max_retries=0)
        while True:
            try:
                reply = client.chat.completions.create(
                    model="assistant", messages=[{{"role": "user", "content": "Go on."}}])
            except openai.RateLimitError as err:
                print(err.status_code, err.body["code"], "-", err.body["message"])
                break
            print("served", reply.usage.completion_tokens, "tokens")
        """)
    usage = flow.usage("demo")
    t.text(f"""
        The ledger, where tenants are keyed by namespace/name, says `default/demo` spent
        {usage.spent_micros} of its {usage.limit_micros} micro-USD; the {usage.remaining_micros}
        left do not pay for another request.
        """ + ("""(Its Tenant status still says `Active`: the operator reports `Exhausted` only
        once nothing at all is left.)""" if usage.remaining_micros else ""))

    lite_key = flow.api_key("demo-lite")
    t.text("""
        ## 7. The downgrade tenant moves to the fallback

        `demo-lite` is served by `assistant` while its budget covers a request's worst case
        there, then by `assistant-lite` at a tenth of the price; the response says which model
        answered, and a header says from which one it was downgraded:
        """)
    printed = t.python(f"""
        import openai

        client = openai.OpenAI(base_url="{SHOWN_URL}", api_key="{lite_key}", max_retries=0)
        for _ in range(12):
            raw = client.chat.completions.with_raw_response.create(
                model="assistant", max_tokens=200, temperature=0,
                messages=[{{"role": "user", "content": "Tell me more."}}])
            reply = raw.parse()
            print(reply.model, reply.usage.completion_tokens, "tokens,",
                  "downgraded from:", raw.headers.get("x-frugalserve-downgraded"))
            if reply.model == "assistant-lite":
                break
        """)

    assert printed.splitlines()[-1].startswith("assistant-lite"), printed

    flow.kube.wait_for("Tenant", "demo", lambda o: (o.get("status") or {}).get(
        "spentUSD") == usage.spent_micros / 1e6)
    lite = flow.usage("demo-lite")
    flow.kube.wait_for("Tenant", "demo-lite", lambda o: (o.get("status") or {}).get(
        "spentUSD") == lite.spent_micros / 1e6)
    t.text("""
        ## 8. Live cost and spend in `kubectl get`

        Every few seconds the operator copies each tenant's spend from the ledger into its
        status, and prices tokens live from the gateway's metrics: `$/HOUR` = ready replicas x
        `gpusPerReplica` x GPU-hour price, `$/1M TOKENS` = that over the tokens served per
        hour (blank while no tokens flow). This run is CPU-only (`gpusPerReplica: 0`), so the
        GPU cost is exactly $0; on GPU nodes the same columns carry the GPU price. Captured
        while `demo-lite` sends a few more requests (now served by `assistant-lite`):
        """)
    load = threading.Thread(target=flow.spend, args=("demo-lite", "assistant"),
                            kwargs={"burst": 8, "max_tokens": 48, "drain": False})
    load.start()
    try:
        md = flow.kube.wait_for("ModelDeployment", "assistant-lite", lambda o: (
            o.get("status") or {}).get("tokensPerSecond"))
        t.kubectl_get("ModelDeployment", "Tenant")
    finally:
        load.join()
    t.shell("kubectl get md assistant-lite -o jsonpath='tokens/s: {.status.tokensPerSecond}, "
            "$/hour: {.status.hourlyCostUSD}, $/1M tokens: "
            "{.status.liveCostPerMillionTokensUSD}'",
            ", ".join(f"{label}: {go_number(md['status'][key])}" for label, key in (
                ("tokens/s", "tokensPerSecond"), ("$/hour", "hourlyCostUSD"),
                ("$/1M tokens", "liveCostPerMillionTokensUSD"))))
    t.text("""
        The same flow, with every number above checked, is `tests/e2e/test_flow.py` (`pytest
        -m e2e`), including a negative control: gateways that only check the budget before a
        request, without reserving it, let a burst of requests overspend it.
        """)
    return t.markdown()


def main() -> None:
    flow = Flow(PORTS)
    try:
        flow.apply_quickstart()
        OUT.write_text(write(flow))
    finally:
        flow.close()
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

