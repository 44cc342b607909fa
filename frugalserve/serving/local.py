"""Local mode: `frugalserve serve -f FILE` deploys the manifests' ModelDeployments and Tenants as
the same Serve application the operator renders (`config.serve_application`) on a local Ray,
with the SQLite ledger in a state directory; `frugalserve usage` reads that ledger back."""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frugalserve.api.manifests import ManifestError, load_manifests
from frugalserve.ledger import open_ledger
from frugalserve.serving.config import (
    GATEWAY_CPUS,
    GATEWAY_DEPLOYMENT,
    SERVE_ENV,
    AppConfig,
    GatewayUserConfig,
    app_config,
    gateway_user_config,
    hash_key,
    ledger_tenant,
    serve_application,
    tenant_config,
)

APP_NAME = "frugalserve"
DEFAULT_STATE_DIR = Path(os.environ.get("FRUGALSERVE_STATE_DIR", "~/.frugalserve")).expanduser()


@dataclass(frozen=True)
class LocalPlan:
    """What local mode deploys, and the keys to print."""

    app: AppConfig
    user: GatewayUserConfig
    keys: dict[str, str]
    """Tenant (its ledger key, `namespace/name`) -> API key (from the file's Secrets, else
    generated once and kept in the state)."""
    generated: frozenset[str]

    def application(self, env: dict[str, str] | None = None) -> dict[str, Any]:
        """The Serve config entry (with a runtime env, e.g. the tests' negative control)."""
        entry = serve_application(self.app, self.user, name=APP_NAME)
        if env:
            entry["runtime_env"] = {"env_vars": env}
        return entry

    def cpus_needed(self) -> float:
        """Logical CPUs that every replica of the application asks for."""
        return self.app.gateway_replicas * GATEWAY_CPUS + sum(
            m.num_cpus * max(m.autoscaling.max_replicas, 1) for m in self.app.models)

    def cpus(self) -> int:
        """Logical CPUs for the local Ray: every replica placed even on a small machine."""
        return max(math.ceil(self.cpus_needed()), os.cpu_count() or 1)

    def check_gpus(self, available: float) -> None:
        """Raise ManifestError, naming each model that asks for GPUs, when `available` GPUs
        cannot hold the first replicas of them all (Serve would wait for GPUs until the
        timeout)."""
        wanting = [m for m in self.app.models if m.num_gpus > 0]
        needed = sum(m.num_gpus * max(m.autoscaling.min_replicas, 1) for m in wanting)
        if needed > available:
            raise ManifestError([
                f"ModelDeployment/{m.name}: spec.resources.gpusPerReplica: {m.num_gpus:g} per"
                f" replica; this machine has {available:g} GPU(s) and the first replicas need"
                f" {needed:g} (set it to 0 to run on the CPU)" for m in wanting])


def plan(files: list[str], state_dir: Path, *, gateway_replicas: int = 1) -> LocalPlan:
    """Read the manifests; resolve each Tenant's key; point the ledger into `state_dir`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    found = load_manifests(*files)
    kept_path = state_dir / "generated-keys.json"
    kept: dict[str, str] = json.loads(kept_path.read_text()) if kept_path.exists() else {}
    keys, generated, tenants = {}, set(), []
    for t in found.tenants:
        tenant = ledger_tenant(t.metadata.namespace, t.metadata.name)
        key = found.api_key(t)
        if key is not None:
            keys[tenant] = key
        else:
            keys[tenant] = kept.setdefault(tenant, f"fs-{secrets.token_urlsafe(18)}")
            generated.add(tenant)
        tenants.append(tenant_config(t, hash_key(keys[tenant])))
    if generated:
        kept_path.write_text(json.dumps(kept, indent=2, sort_keys=True))
        kept_path.chmod(0o600)
    ledger_url = f"sqlite:///{(state_dir / 'ledger.db').resolve()}"
    app = app_config(found.models, ledger_url, gateway_replicas=gateway_replicas)
    user = gateway_user_config(found.models, tenants)
    (state_dir / "gateway.json").write_text(user.model_dump_json(indent=2))
    return LocalPlan(app, user, keys, frozenset(generated))


def start(p: LocalPlan, *, host: str = "127.0.0.1", port: int = 8000,
          env: dict[str, str] | None = None, report: Callable[[str], None] = print,
          timeout_s: float = 600.0, extra_cpus: int = 0) -> str:
    """Start a local Ray and Serve, deploy the application, wait until it runs; the base URL.
    On failure (too few GPUs for the plan, a failed deploy, the timeout) it stops what it
    started before raising. `extra_cpus` leaves logical CPUs for applications deployed beside
    it (tests)."""
    import ray
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    ray.init(address="local", num_cpus=p.cpus() + extra_cpus, include_dashboard=False,
             namespace=APP_NAME, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": SERVE_ENV})
    try:
        p.check_gpus(ray.cluster_resources().get("GPU", 0))
    except ManifestError:
        ray.shutdown()  # before Serve starts: nothing else to stop
        raise
    try:
        client = serve_api.serve_start(http_options={"host": host, "port": port})
        client.deploy_apps(ServeDeploySchema(applications=[p.application(env)]),
                           _blocking=False)
        wait_running(report, timeout_s)
    except BaseException:
        stop()
        raise
    return f"http://{host}:{port}/v1"


def wait_running(report: Callable[[str], None], timeout_s: float,
                 app_name: str = APP_NAME) -> None:
    """Report each deployment's state as it changes until the application `app_name` runs."""
    from ray import serve

    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(app_name)
        if app is not None:
            for name, d in sorted(app.deployments.items()):
                what = "loading weights" if name != GATEWAY_DEPLOYMENT else "starting"
                state = f"{d.status.value}" + (f" ({what})" if d.status.value == "UPDATING"
                                               else "")
                if seen.get(name) != state:
                    seen[name] = state
                    report(f"  {name}: {state} {d.message}".rstrip())
            if app.status.value == "RUNNING":
                return
            if app.status.value in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise RuntimeError(f"deploy failed: {app.message}")
        time.sleep(0.5)
    raise TimeoutError(f"the application was not running after {timeout_s:.0f}s")


def stop() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def banner(p: LocalPlan, base_url: str) -> str:
    """The ready message: URL, keys, and a curl and an openai snippet to paste."""
    first = sorted(p.keys)[0]
    model = p.app.models[0].name
    lines = [f"frugalserve is serving at {base_url}", "", "API keys:"]
    for tenant, key in sorted(p.keys.items()):
        lines.append(f"  {tenant}: {key}" + ("  (generated)" if tenant in p.generated else ""))
    lines += [
        "", "Try it:",
        f"  curl {base_url}/chat/completions -H 'Authorization: Bearer {p.keys[first]}' \\",
        "    -H 'Content-Type: application/json' \\",
        f"    -d '{{\"model\": \"{model}\", \"max_tokens\": 32, "
        "\"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'",
        "",
        "  python -c \"from openai import OpenAI; c = OpenAI(base_url='" + base_url
        + f"', api_key='{p.keys[first]}'); print(c.chat.completions.create(model='{model}', "
        "max_tokens=32, messages=[{'role': 'user', 'content': 'Hello!'}]))\"",
        "", "Usage: frugalserve usage    Stop: Ctrl-C",
    ]
    return "\n".join(lines)


def say(line: str) -> None:
    print(line, flush=True)


def serve_forever(files: list[str], state_dir: Path, *, host: str = "127.0.0.1",
                  port: int = 8000, report: Callable[[str], None] = say) -> None:
    """The `frugalserve serve` command: deploy, print the banner, run until SIGINT/SIGTERM."""
    p = plan(files, state_dir)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    report(f"starting Ray Serve ({len(p.app.models)} model(s), state in {state_dir})")
    base_url = start(p, host=host, port=port, report=report)
    try:
        report(banner(p, base_url))
        done.wait()
        report("shutting down")
    finally:
        stop()


def usage_rows(state_dir: Path) -> list[dict[str, Any]]:
    """Each tenant's spend, tokens, remaining budget and state, from the ledger in `state_dir`;
    tenants by their ledger key, `namespace/name` (`default/` for manifests without one)."""
    db = state_dir / "ledger.db"
    if not db.exists():
        raise FileNotFoundError(f"no ledger at {db}: run `frugalserve serve` first")
    cfg_path = state_dir / "gateway.json"
    policy = {}
    if cfg_path.exists():
        user = GatewayUserConfig.model_validate_json(cfg_path.read_text())
        policy = {t.name: t.on_exceeded.value for t in user.tenants}
    ledger = open_ledger(f"sqlite:///{db.resolve()}")
    try:
        rows = []
        for name in ledger.tenants():
            u = ledger.usage(name)
            out = (u.remaining_micros is not None and u.remaining_micros <= 0) or (
                u.remaining_tokens is not None and u.remaining_tokens <= 0)
            state = "Active" if not out else (
                "Downgraded" if policy.get(name) == "downgrade" else "Exhausted")
            rows.append({
                "tenant": name, "spent_usd": u.spent_micros / 1e6,
                "limit_usd": None if u.limit_micros is None else u.limit_micros / 1e6,
                "remaining_usd": None if u.remaining_micros is None else u.remaining_micros / 1e6,
                "tokens_prompt": u.tokens_prompt, "tokens_completion": u.tokens_completion,
                "remaining_tokens": u.remaining_tokens, "in_flight": u.in_flight,
                "period_end": None if u.period_end is None else u.period_end.isoformat(),
                "state": state,
            })
        return rows
    finally:
        ledger.close()


def usage_table(rows: list[dict[str, Any]]) -> str:
    """`frugalserve usage` output: one line per tenant."""
    def usd(v: float | None) -> str:
        return "unlimited" if v is None else f"${v:.6f}"

    head = ("TENANT", "STATE", "SPENT", "LIMIT", "REMAINING", "PROMPT", "COMPLETION", "RESETS")
    table = [head] + [(
        r["tenant"], r["state"], usd(r["spent_usd"]), usd(r["limit_usd"]),
        usd(r["remaining_usd"]), str(r["tokens_prompt"]), str(r["tokens_completion"]),
        r["period_end"] or "never") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in table)
