"""Local mode refuses, before deploying, a plan whose models want more GPUs than the local Ray
has (`LocalPlan.check_gpus`); Serve would otherwise wait for them until its timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from frugalserve.api.manifests import ManifestError
from frugalserve.serving import local

pytestmark = pytest.mark.unit

MODEL = """\
apiVersion: frugalserve.io/v1alpha1
kind: ModelDeployment
metadata: {{name: {name}}}
spec:
  model: {{source: "builtin://tiny-dense"}}
  precision: {{dtype: float32}}
  resources: {{gpusPerReplica: {gpus}, cpu: "1", memory: 2Gi}}
  autoscaling: {{minReplicas: {min}, maxReplicas: 2}}
  pricing: {{inputPerMillionUSD: 1.0, outputPerMillionUSD: 2.0}}
"""


def plan_of(tmp_path: Path, *models: tuple[str, int, int]) -> local.LocalPlan:
    """A plan of models given as (name, gpusPerReplica, minReplicas)."""
    path = tmp_path / "models.yaml"
    path.write_text("---\n".join(MODEL.format(name=n, gpus=g, min=m) for n, g, m in models))
    return local.plan([str(path)], tmp_path / "state")


def test_a_gpu_model_on_a_machine_without_gpus_names_its_field(tmp_path: Path) -> None:
    p = plan_of(tmp_path, ("big", 1, 1), ("small", 0, 1))
    with pytest.raises(ManifestError) as err:
        p.check_gpus(0)
    assert err.value.errors == [
        "ModelDeployment/big: spec.resources.gpusPerReplica: 1 per replica; this machine has "
        "0 GPU(s) and the first replicas need 1 (set it to 0 to run on the CPU)"]


def test_gpus_count_every_model_and_their_minimum_replicas(tmp_path: Path) -> None:
    p = plan_of(tmp_path, ("a", 2, 2), ("b", 1, 0), ("c", 0, 1))
    with pytest.raises(ManifestError) as err:
        p.check_gpus(4)  # a: 2 x 2, b: 1 x its first replica
    assert [e.split(":")[0] for e in err.value.errors] == ["ModelDeployment/a",
                                                           "ModelDeployment/b"]
    assert "need 5" in err.value.errors[0]
    p.check_gpus(5)
    plan_of(tmp_path, ("c", 0, 1)).check_gpus(0)
