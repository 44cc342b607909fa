"""One local Ray Serve application per test session, deployed exactly as local mode deploys it
(the serveConfigV2 entry of `config.serve_application`): 2 gateway replicas, 2 replicas of the
`dense` model and 1 of `lite`, one SQLite ledger file shared by all of them."""

from __future__ import annotations

import math
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from frugalserve.ledger import Ledger, open_ledger
from frugalserve.serving import local

with warnings.catch_warnings():
    # Ray 2.60's Serve schema still passes pydantic's deprecated `Field(update_type=...)`.
    warnings.filterwarnings("ignore", "Using extra keyword arguments on `Field`",
                            DeprecationWarning)
    import ray.serve.schema  # noqa: F401

MANIFESTS = Path(__file__).with_name("manifests.yaml")
UNSAFE_MANIFESTS = Path(__file__).with_name("unsafe.yaml")
UNSAFE_APP = "unsafe"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    plan: local.LocalPlan
    base_url: str
    ledger: Ledger


@pytest.fixture(scope="session")
def unsafe_plan(tmp_path_factory: pytest.TempPathFactory) -> local.LocalPlan:
    return local.plan([str(UNSAFE_MANIFESTS)], tmp_path_factory.mktemp(UNSAFE_APP),
                      gateway_replicas=2)


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory,
           unsafe_plan: local.LocalPlan) -> Iterator[Served]:
    state = tmp_path_factory.mktemp("state")
    plan = local.plan([str(MANIFESTS)], state, gateway_replicas=2)
    base_url = local.start(plan, port=free_port(), report=lambda _line: None, timeout_s=300,
                           extra_cpus=math.ceil(unsafe_plan.cpus_needed()))
    ledger = open_ledger(plan.app.ledger_url)
    try:
        yield Served(plan, base_url, ledger)
    finally:
        ledger.close()
        local.stop()


@pytest.fixture(scope="session")
def unsafe(served: Served, unsafe_plan: local.LocalPlan) -> Iterator[Served]:
    """The negative control: the burst tenant's application with check-then-charge admission
    (`FRUGALSERVE_UNSAFE_CHECK_THEN_CHARGE=1`), its own ledger, beside the main application."""
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    from frugalserve.serving.app import UNSAFE_CHECK_THEN_CHARGE

    plan = unsafe_plan
    entry = {**plan.application({UNSAFE_CHECK_THEN_CHARGE: "1"}), "name": UNSAFE_APP,
             "route_prefix": f"/{UNSAFE_APP}"}
    serve_api.serve_start().deploy_apps(
        ServeDeploySchema(applications=[served.plan.application(), entry]), _blocking=False)
    local.wait_running(lambda _line: None, 300, app_name=UNSAFE_APP)
    ledger = open_ledger(plan.app.ledger_url)
    try:
        yield Served(plan, served.base_url.replace("/v1", f"/{UNSAFE_APP}/v1"), ledger)
    finally:
        ledger.close()
