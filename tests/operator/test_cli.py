"""`frugalserve operator` for real: the CLI in a subprocess, logged in through a kubeconfig
that points at the emulator, with kopf's liveness endpoint; and its settings from env/flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from frugalserve.operator.settings import OperatorSettings
from tests.operator.conftest import MODELS, RAYSERVICES, Cluster, eventually, model
from tests.operator.test_cost import free_port

pytestmark = pytest.mark.operator


def test_settings_from_environment_then_flags(tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"L4": 0.7}))
    env = {"FRUGALSERVE_NAMESPACES": "ml,prod", "FRUGALSERVE_GPU_PRICES": str(prices),
           "FRUGALSERVE_COST_INTERVAL_S": "30", "UNRELATED": "x"}
    settings = OperatorSettings.from_env(env, {"cost_interval_s": 5.0, "image": None})
    assert settings.namespaces == ("ml", "prod")
    assert settings.gpu_prices == {"L4": 0.7}
    assert settings.cost_interval_s == 5.0  # the flag wins over the environment
    assert settings.render_settings().gpu_prices == {"L4": 0.7}
    with pytest.raises(ValueError, match="cost_interval_s"):
        OperatorSettings.from_env({"FRUGALSERVE_COST_INTERVAL_S": "-1"})


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def test_frugalserve_operator_runs_kopf_with_a_liveness_endpoint(
    cluster: Cluster, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": cluster.url}}],
        "users": [{"name": "test", "user": {"token": "test"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "test"}}],
    }))
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "frugalserve.cli", "operator", "--liveness", liveness,
         "--cost-interval", "3600"],
        env={**env, "KUBECONFIG": str(kubeconfig)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await cluster.create(MODELS, model("alpha"))
        await eventually(lambda: cluster.get(RAYSERVICES, "alpha"), timeout=30)
        assert await eventually(lambda: healthy(liveness))
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert b"Traceback" not in stderr, stderr.decode()
