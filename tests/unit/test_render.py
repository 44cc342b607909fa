"""render(): ModelDeployment -> KubeRay RayService. Golden files, KubeRay's own schema, the cost
ceiling, fallbacks and determinism. Regenerate the golden files with
`FRUGALSERVE_REGEN=1 pytest tests/unit/test_render.py` and review the diff."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from frugalserve.api import ModelDeployment, load_manifests
from frugalserve.api.crds import to_yaml
from frugalserve.cli import main, tenant_configs
from frugalserve.operator.render import (
    FallbackError,
    RenderSettings,
    fallback_chain,
    render,
)
from frugalserve.pricing.cost import CostCeilingError, replica_bounds
from frugalserve.serving.config import SERVE_ENV, AppConfig, GatewayUserConfig
from tests.schemas import ROOT

pytestmark = pytest.mark.unit

GOLDEN = ROOT / "tests" / "golden"
SETTINGS = RenderSettings(image="example.com/frugalserve-ray:test", ledger_url="redis://r:6379/0")
ALL = load_manifests(*sorted((ROOT / "examples").glob("*.yaml")))
BY_NAME = {md.metadata.name: md for md in ALL.models}


def render_example(md: ModelDeployment) -> dict[str, Any]:
    return render(md, SETTINGS, fallback_chain(md, BY_NAME), tenant_configs(ALL))


def with_spec(md: ModelDeployment, **changes: Any) -> ModelDeployment:
    """A copy of md with spec sections replaced (validated again)."""
    doc = md.model_dump(by_alias=True, exclude_none=True)
    for section, value in changes.items():
        doc["spec"][section] = doc["spec"].get(section, {}) | value
    return ModelDeployment.model_validate(doc)


def serve_app(rayservice: dict[str, Any]) -> dict[str, Any]:
    apps = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    assert len(apps) == 1
    return dict(apps[0])


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_golden(name: str) -> None:
    text = to_yaml(render_example(BY_NAME[name]))
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("FRUGALSERVE_REGEN"):
        path.write_text(text)
    assert path.read_text() == text, "review, then regenerate with FRUGALSERVE_REGEN=1"


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_valid_against_kuberay_schema(
    name: str, rayservice_errors: Callable[[dict[str, Any]], list[str]]
) -> None:
    assert rayservice_errors(render_example(BY_NAME[name])) == []


def test_schema_check_can_fail(rayservice_errors: Callable[[dict[str, Any]], list[str]]) -> None:
    broken = render_example(BY_NAME["llama-8b"])
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    broken["spec"]["serveConfigV2"] = {"not": "a string"}
    errors = rayservice_errors(broken)
    assert any("maxReplicas" in e for e in errors) and any("serveConfigV2" in e for e in errors)


def test_cluster_shape() -> None:
    md = BY_NAME["llama-8b"]
    obj = render_example(md)
    cluster = obj["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    (worker,) = cluster["workerGroupSpecs"]
    pod = worker["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert (worker["minReplicas"], worker["maxReplicas"]) == (1, 4)
    owner = obj["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == (
        "ModelDeployment", "llama-8b", True
    )
    assert obj["metadata"]["labels"]["frugalserve.io/model-deployment"] == "llama-8b"


def test_serve_config_is_the_typed_app_config() -> None:
    app = serve_app(render_example(BY_NAME["assistant"]))
    assert app["import_path"] == "frugalserve.serving.app:build_app"
    config = AppConfig.model_validate(app["args"])
    assert [m.name for m in config.models] == ["assistant", "assistant-lite"]
    assert config.ledger_url == "redis://r:6379/0"
    by_name = {d["name"]: d for d in app["deployments"]}
    user = GatewayUserConfig.model_validate(by_name["Gateway"]["user_config"])
    assert [t.name for t in user.tenants] == [
        "default/demo", "default/demo-lite", "default/team-chat"]
    assert user.prices["assistant"].output_per_million_usd == 6.0
    assert by_name["Model-assistant"]["ray_actor_options"]["num_gpus"] == 0


def test_every_ray_container_runs_serve_with_the_local_mode_settings() -> None:
    """The cluster's Ray processes get the Serve settings local mode starts its Ray with."""
    for md in ALL.models:
        cluster = render_example(md)["spec"]["rayClusterConfig"]
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        containers = [c for g in groups for c in g["template"]["spec"]["containers"]]
        assert len(containers) == 1 + len(cluster["workerGroupSpecs"])
        for container in containers:
            assert {e["name"]: e["value"] for e in container["env"]} == SERVE_ENV


def test_gpus_per_replica_reach_ray_actor_options() -> None:
    app = serve_app(render_example(BY_NAME["mixtral-8x7b"]))
    model = next(d for d in app["deployments"] if d["name"] == "Model-mixtral-8x7b")
    assert model["ray_actor_options"]["num_gpus"] == 2
    assert model["autoscaling_config"]["max_replicas"] == 3


def test_api_keys_never_appear_only_their_hashes() -> None:
    text = "".join(to_yaml(render_example(md)) for md in ALL.models)
    for secret in ALL.secrets.values():
        assert secret["api-key"] not in text
    assert "key_sha256" in text


def test_cost_ceiling_caps_replicas() -> None:
    md = with_spec(BY_NAME["llama-8b"], autoscaling={"maxReplicas": 10, "maxHourlyCostUSD": 2.9})
    bounds = replica_bounds(md.spec)
    assert (bounds.max_replicas, bounds.capped) == (4, True)  # 4 x 0.71 = 2.84 <= 2.9 < 3.55
    worker = render(md, SETTINGS)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    model = serve_app(render(md, SETTINGS))["deployments"][1]
    assert worker["maxReplicas"] == model["autoscaling_config"]["max_replicas"] == 4


def test_without_ceiling_nothing_is_capped() -> None:
    md = with_spec(BY_NAME["llama-8b"], autoscaling={"maxReplicas": 10, "maxHourlyCostUSD": None})
    assert replica_bounds(md.spec).max_replicas == 10


def test_ceiling_uses_the_cluster_price_table() -> None:
    md = with_spec(BY_NAME["llama-8b"], autoscaling={"maxReplicas": 10, "maxHourlyCostUSD": 3})
    assert replica_bounds(md.spec, {"L4": 1.0}).max_replicas == 3
    assert replica_bounds(md.spec, {"L4": 1.0}).affordable == 3


def test_ceiling_below_one_replica_is_an_error() -> None:
    md = with_spec(BY_NAME["llama-8b"], autoscaling={"maxHourlyCostUSD": 0.5})
    with pytest.raises(CostCeilingError, match=r"maxHourlyCostUSD: 0.5 USD/h pays for 0"):
        render(md, SETTINGS)


def test_fallback_chain_errors() -> None:
    doc = BY_NAME["assistant-lite"].model_dump(by_alias=True, exclude_none=True)
    doc["spec"]["fallback"] = "assistant"
    lite = ModelDeployment.model_validate(doc)
    with pytest.raises(FallbackError, match="loops"):
        fallback_chain(BY_NAME["assistant"], {"assistant-lite": lite, "assistant": lite})
    with pytest.raises(FallbackError, match="does not exist"):
        fallback_chain(BY_NAME["assistant"], {})


def test_render_is_deterministic_whatever_the_tenant_order() -> None:
    md = BY_NAME["assistant"]
    tenants = tenant_configs(ALL)
    first = to_yaml(render(md, SETTINGS, fallback_chain(md, BY_NAME), tenants))
    again = to_yaml(render(md, SETTINGS, fallback_chain(md, BY_NAME), tenants[::-1]))
    assert first == again


def test_cli_render_prints_valid_rayservices(
    capsys: pytest.CaptureFixture[str], rayservice_errors: Callable[[dict[str, Any]], list[str]]
) -> None:
    files = [str(ROOT / "examples" / n) for n in ("quickstart.yaml", "dense.yaml", "tenants.yaml")]
    assert main(["render", *sum((["-f", f] for f in files), [])]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert [d["metadata"]["name"] for d in docs] == ["assistant", "assistant-lite", "llama-8b"]
    assert all(rayservice_errors(d) == [] for d in docs)


def test_cli_validate_names_fields_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (ROOT / "examples" / "dense.yaml").read_text().replace("gpuType: L4", "gpuType: K80")
    )
    assert main(["validate", "-f", str(bad)]) == 1
    assert "spec.resources.gpuType: unknown GPU type 'K80'" in capsys.readouterr().err


def test_cli_render_needs_the_tenants_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (ROOT / "examples" / "tenants.yaml").read_text().split("---", 2)[2]
    only_tenants = tmp_path / "t.yaml"
    only_tenants.write_text(text)
    dense = str(ROOT / "examples" / "dense.yaml")
    assert main(["render", "-f", dense, "-f", str(only_tenants)]) == 1
    assert "spec.apiKeySecretRef: no key 'api-key' in Secret default/team-search-key" in (
        capsys.readouterr().err
    )
