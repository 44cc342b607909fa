"""`frugalserve serve` with a model that wants more GPUs than the machine has stops at once with
the field to change, and leaves no Ray running. (Runs before the session's shared Ray starts:
it starts and stops its own. No machine has the 16 GPUs the model asks for.)"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import ray

from frugalserve.api.manifests import ManifestError
from frugalserve.serving import local
from tests.serving.conftest import free_port

pytestmark = pytest.mark.serving
MANIFEST = """\
apiVersion: frugalserve.io/v1alpha1
kind: ModelDeployment
metadata: {name: big}
spec:
  model: {source: "builtin://tiny-dense"}
  precision: {dtype: float32}
  resources: {gpusPerReplica: 16, gpuType: H100-80GB, cpu: "1", memory: 2Gi}
  autoscaling: {minReplicas: 1, maxReplicas: 1}
  pricing: {inputPerMillionUSD: 1.0, outputPerMillionUSD: 2.0}
"""
FIELD = "ModelDeployment/big: spec.resources.gpusPerReplica: 16 per replica"


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "big.yaml"
    path.write_text(MANIFEST)
    return path


def test_serve_stops_at_once_naming_the_field(manifest: Path, tmp_path: Path) -> None:
    t = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "frugalserve.cli", "serve", "-f", str(manifest),
         "--state-dir", str(tmp_path / "state"), "--port", str(free_port())],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"error: {FIELD}" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert time.monotonic() - t < 60


def test_start_shuts_down_the_ray_it_started(manifest: Path, tmp_path: Path) -> None:
    plan = local.plan([str(manifest)], tmp_path / "state")
    with pytest.raises(ManifestError, match=re.escape(FIELD)):
        local.start(plan, port=free_port(), report=lambda _line: None)
    assert not ray.is_initialized()
    left = [p.name() for p in psutil.Process().children(recursive=True)]
    assert not [name for name in left if "raylet" in name or "gcs_server" in name], left
