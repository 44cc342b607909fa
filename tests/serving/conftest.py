"""One local Ray Serve application per test session, deployed exactly as local mode deploys it
(the serveConfigV2 entry of `config.serve_application`): 2 gateway replicas, 2 replicas of the
`dense` model and 1 of `lite`, one SQLite ledger file shared by all of them."""

from __future__ import annotations

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
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    state = tmp_path_factory.mktemp("state")
    plan = local.plan([str(MANIFESTS)], state, gateway_replicas=2)
    base_url = local.start(plan, port=free_port(), report=lambda _line: None, timeout_s=300)
    ledger = open_ledger(plan.app.ledger_url)
    try:
        yield Served(plan, base_url, ledger)
    finally:
        ledger.close()
        local.stop()
