"""The chart as real Helm installs it (into kmock's emulator) in every values scenario: each
object valid for Kubernetes (kubernetes-validate, strict) or, for the CRDs, identical to the
generated ones; names within limits; pods locked down; the operator's settings wired to the
names it reads; images, pricing and ledger matching the code's defaults."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from frugalserve.api.gpus import GPU_TYPES
from frugalserve.cli import build_parser
from frugalserve.operator.render import RenderSettings
from frugalserve.operator.settings import ENV_PREFIX, OperatorSettings
from tests.chart.conftest import CHART, NAMESPACE, ROOT, SCENARIOS, Release, load_values

pytestmark = pytest.mark.chart

# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.26.0", kubernetes_validate.latest_version())
ReleaseOf = Callable[[str], Release]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_objects_validate(release: ReleaseOf, scenario: str) -> None:
    errors = []
    for obj in release(scenario).objects:
        if obj["kind"] == "PodMonitor":
            continue  # prometheus-operator's kind: checked in test_podmonitor_targets_gateways
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{obj['kind']}/{obj['metadata']['name']} ({version}): {exc}")
    assert errors == []


def test_validation_catches_a_broken_object(release: ReleaseOf) -> None:
    # Negative control: a misspelled field in a rendered Deployment is refused.
    deployment = release("default").one("Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_names_are_unique_and_within_limits(release: ReleaseOf, scenario: str) -> None:
    objects = release(scenario).objects
    keys = [(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys))
    assert [k for k in keys if len(k[2]) > 63] == []
    # A StatefulSet's controller-revision-hash label is its name plus 11 characters.
    assert all(len(s["metadata"]["name"]) <= 52 for s in release(scenario).of_kind("StatefulSet"))


def test_long_names_are_cut_without_collisions(release: ReleaseOf) -> None:
    # A 75-character fullnameOverride: the prefix is cut, each component keeps its suffix.
    full = load_values("ci/all-values.yaml")["fullnameOverride"]
    names = {o["metadata"]["name"] for o in release("all-values").objects}
    for suffix in ("-operator", "-pricing", "-redis", "-redis-headless", "-gateways"):
        (name,) = [n for n in names if n.endswith(suffix) and not n.endswith("-redis-headless")
                   or n.endswith(suffix) and suffix == "-redis-headless"]
        assert full.startswith(name.removesuffix(suffix)) and len(name) <= 63, name


def test_crds_are_the_generated_ones_and_helm_creates_them(release: ReleaseOf) -> None:
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == generated
    for name in generated:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), name
        crd = yaml.safe_load((CHART / "crds" / name).read_text())
        kubernetes_validate.validate(crd, K8S_VERSIONS[-1], strict=True)
        assert ("CustomResourceDefinition", "", crd["metadata"]["name"]) in release(
            "default").created


def containers(release: Release) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of every workload."""
    return [
        (w["spec"]["template"]["spec"], c)
        for kind in ("Deployment", "StatefulSet")
        for w in release.of_kind(kind)
        for c in w["spec"]["template"]["spec"]["containers"]
    ]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_pods_are_locked_down(release: ReleaseOf, scenario: str) -> None:
    found = containers(release(scenario))
    assert found
    for pod, container in found:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert "ALL" in context["capabilities"]["drop"]
        assert "add" not in context["capabilities"]
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["requests"]["memory"]


def operator_container(release: Release) -> dict[str, Any]:
    (container,) = release.one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def operator_env(release: Release, tmp_path: Path) -> dict[str, str]:
    """The operator's environment as the kubelet would build it: Secret values filled in,
    $(VAR) references expanded, the pricing ConfigMap mounted (here: written to tmp_path)."""
    env: dict[str, str] = {}
    for var in operator_container(release)["env"]:
        value = var.get("value", "secret-from-" + var.get("valueFrom", {}).get(
            "secretKeyRef", {}).get("name", ""))
        env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], value)
    (configmap,) = [c for c in release.of_kind("ConfigMap") if c["metadata"]["name"].endswith(
        "-pricing")]
    prices = tmp_path / "gpu-prices.json"
    prices.write_text(configmap["data"]["gpu-prices.json"])
    env[ENV_PREFIX + "GPU_PRICES"] = str(prices)
    return env


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_operator_env_names_are_settings_fields(release: ReleaseOf, scenario: str) -> None:
    names = {v["name"] for v in operator_container(release(scenario))["env"]}
    fields = {ENV_PREFIX + f.upper() for f in OperatorSettings.model_fields}
    assert {n for n in names if n.startswith(ENV_PREFIX)} - fields == set()


def test_operator_settings_from_the_all_values_deployment(
    release: ReleaseOf, tmp_path: Path
) -> None:
    values = load_values("ci/all-values.yaml")
    settings = OperatorSettings.from_env(operator_env(release("all-values"), tmp_path))
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.gpu_prices == values["pricing"]["gpuHourUSD"] | {
        k: g.hour_usd for k, g in GPU_TYPES.items() if k not in values["pricing"]["gpuHourUSD"]
    }
    assert settings.image == "registry.example.com/frugalserve/serving:0.1.0-rc1"
    assert settings.prometheus_url == values["prometheus"]["url"]
    assert settings.metrics_url_template == values["operator"]["metricsUrlTemplate"]
    assert (settings.gateway_replicas, settings.cost_interval_s, settings.cost_window_s,
            settings.tenant_interval_s, settings.key_interval_s, settings.http_timeout_s
            ) == (3, 30, 300, 10, 120, 2.5)
    redis = release("all-values").one("StatefulSet")["metadata"]["name"]
    ledger = f"redis://:secret-from-my-redis@{redis}.{NAMESPACE}.svc:6379/0"
    assert (settings.ledger_url, settings.serving_ledger_url) == (ledger, ledger)


def test_operator_defaults_match_the_code(release: ReleaseOf, tmp_path: Path) -> None:
    settings = OperatorSettings.from_env(operator_env(release("default"), tmp_path))
    assert settings.namespaces == ()
    # The chart's default serving image is the one the operator renders without it.
    assert settings.image == RenderSettings().image
    assert settings.prometheus_url is None
    assert settings.ledger_url == (
        f"redis://:secret-from-frugalserve-redis@frugalserve-redis.{NAMESPACE}.svc:6379/0")


def test_pricing_defaults_are_the_operators_built_in_table(
    release: ReleaseOf, tmp_path: Path
) -> None:
    built_in = {name: gpu.hour_usd for name, gpu in GPU_TYPES.items()}
    assert load_values()["pricing"]["gpuHourUSD"] == built_in
    assert OperatorSettings.from_env(operator_env(release("default"), tmp_path)).gpu_prices == (
        built_in)
    # Control: the overriding values file does reach the rendered table.
    all_values = OperatorSettings.from_env(operator_env(release("all-values"), tmp_path))
    assert all_values.gpu_prices != built_in


def test_external_ledger_takes_its_password_from_the_secret(
    release: ReleaseOf, tmp_path: Path
) -> None:
    rel = release("external-ledger")
    assert rel.of_kind("StatefulSet") == [] and rel.of_kind("Secret") == []
    (password,) = [v for v in operator_container(rel)["env"] if v["name"] == "LEDGER_PASSWORD"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": "ledger-redis",
                                                     "key": "redis-password"}
    settings = OperatorSettings.from_env(operator_env(rel, tmp_path))
    assert settings.ledger_url == "rediss://:secret-from-ledger-redis@ledger.example.com:6380/2"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_operator_command_parses_with_the_real_cli(release: ReleaseOf, scenario: str) -> None:
    container = operator_container(release(scenario))
    args = build_parser().parse_args(container["args"])
    assert args.command == "operator"
    port = container["ports"][0]["containerPort"]
    assert args.liveness == f"http://0.0.0.0:{port}/healthz"
    probe = container["livenessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/healthz", "health")


def test_redis_is_durable(release: ReleaseOf) -> None:
    rel = release("default")
    config = next(c for c in rel.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-redis"))
    lines = config["data"]["redis.conf"].splitlines()
    assert {"appendonly yes", "appendfsync always", "dir /data"} <= set(lines)
    statefulset = rel.one("StatefulSet")
    assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain", "whenScaled": "Retain"}
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    secret = rel.one("Secret")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_podmonitor_targets_gateways(release: ReleaseOf) -> None:
    assert release("default").of_kind("PodMonitor") == []
    monitor = release("all-values").one("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    # The labels the operator's render puts on Ray pods select them.
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert {k: v for k, v in selector.items() if not k.startswith("ray.io/")} == {
        k: v for k, v in {
            "app.kubernetes.io/managed-by": "frugalserve", "app.kubernetes.io/name": "frugalserve",
        }.items()
    }
    assert set(monitor["spec"]) == {"selector", "namespaceSelector", "podMetricsEndpoints"}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint == {"port": "serve", "path": "/metrics", "interval": "30s"}


def test_switches_off(release: ReleaseOf) -> None:
    rel = release("minimal")
    kinds = {o["kind"] for o in rel.objects}
    assert not kinds & {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                        "RoleBinding", "PodDisruptionBudget", "Secret"}
    pod = rel.one("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-frugalserve"


def test_chart_version_and_images_follow_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    values = load_values()
    serving = f"{values['serving']['image']['repository']}:{chart['appVersion']}"
    assert serving == RenderSettings().image


def test_notes_say_what_to_apply_next(release: ReleaseOf) -> None:
    notes = release("default").notes
    for needed in ("examples/dense.yaml", "examples/tenants.yaml", "kubectl get md,tn"):
        assert needed in notes
    for example in ("dense.yaml", "tenants.yaml"):
        assert (ROOT / "examples" / example).exists()


def test_pricing_configmap_is_json(release: ReleaseOf) -> None:
    config = next(c for c in release("default").of_kind("ConfigMap")
                  if c["metadata"]["name"].endswith("-pricing"))
    assert json.loads(config["data"]["gpu-prices.json"]) == load_values()["pricing"]["gpuHourUSD"]
