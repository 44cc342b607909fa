"""The e2e layer's fixtures: one running flow (operator + emulator + a Ray cluster of its own)
for the whole module, and the negative control's switch."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

from tests.e2e.flow import Flow, running_flow
from tests.e2e.ray_cluster import Ports

with warnings.catch_warnings():
    # Ray 2.60's Serve schema still passes pydantic's deprecated `Field(update_type=...)`.
    warnings.filterwarnings("ignore", "Using extra keyword arguments on `Field`",
                            DeprecationWarning)
    from frugalserve.serving.app import UNSAFE_CHECK_THEN_CHARGE

FLOW_PORTS = Ports(26400)
CONTROL_PORTS = Ports(26500)
"""Two blocks of ports (Ray's, Serve's HTTP, 40 for workers each), apart from Ray's defaults and
from each other: the negative control's cluster runs while the module's is still up."""
UNSAFE_ENV = {UNSAFE_CHECK_THEN_CHARGE: "1"}
"""The negative control's Ray environment: gateways admit on a usage check, no reservation."""


@pytest.fixture(scope="module")
def flow() -> Iterator[Flow]:
    with running_flow(FLOW_PORTS) as running:
        yield running
        assert running.kube.rbac_gaps() == set(), "the operator used verbs the chart lacks"
