"""The `kubectl get` tables of the tutorial: CRD printer columns read and formatted as kubectl
formats them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.e2e.flow import ROOT
from tests.e2e.kubectl import get, go_number, human_duration, json_path

pytestmark = pytest.mark.unit
MD_CRD = ROOT / "crds" / "frugalserve.io_modeldeployments.yaml"
TN_CRD = ROOT / "crds" / "frugalserve.io_tenants.yaml"
NOW = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)


def test_go_number_and_human_duration_match_kubectl() -> None:
    assert [go_number(x) for x in (0.0, 2.0, 0.05, 0.009238, 1e-05, 2.5e-06, 1e17, 1e21)] == \
        ["0", "2", "0.05", "0.009238", "1e-05", "2.5e-06", "100000000000000000", "1e+21"]
    assert [human_duration(s) for s in (-5, 0, 119, 120, 185, 600, 18180, 108000)] == \
        ["<invalid>", "0s", "119s", "2m", "3m5s", "10m", "5h3m", "30h"]


def test_json_path_filters_conditions() -> None:
    obj = {"status": {"conditions": [{"type": "Valid", "status": "True"},
                                     {"type": "Ready", "status": "False"}]}}
    assert json_path(obj, '.status.conditions[?(@.type=="Ready")].status') == "False"
    assert json_path(obj, '.status.conditions[?(@.type=="Gone")].status') is None
    assert json_path(obj, ".status.replicas.ready") is None


def test_two_types_print_as_kubectl_get_md_tn() -> None:
    md = {"metadata": {"name": "assistant", "creationTimestamp": "2026-01-01T00:02:55Z"},
          "status": {"conditions": [{"type": "Ready", "status": "True"}],
                     "replicas": {"ready": 2}, "liveCostPerMillionTokensUSD": 0.0,
                     "hourlyCostUSD": 1.2}}
    tn = {"metadata": {"name": "demo", "creationTimestamp": "2026-01-01T00:04:00Z"},
          "status": {"state": "Active", "spentUSD": 0.004998, "remainingUSD": 2e-06}}
    fresh = {"metadata": {"name": "new", "creationTimestamp": "2026-01-01T00:05:00Z"}}
    assert get([(MD_CRD, [md]), (TN_CRD, [tn, fresh])], NOW) == "\n".join([
        "NAME                                       READY   REPLICAS   $/1M TOKENS   $/HOUR   AGE",
        "modeldeployment.frugalserve.io/assistant   True    2          0             1.2      2m5s",
        "",
        "NAME                         STATE    SPENT      REMAINING   AGE",
        "tenant.frugalserve.io/demo   Active   0.004998   2e-06       60s",
        "tenant.frugalserve.io/new                                    0s",
    ])
