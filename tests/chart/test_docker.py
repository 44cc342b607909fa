"""The Dockerfiles, checked without a Docker engine: they copy files that exist and that their
.dockerignore lets through, the serving image's Ray is the version ModelDeployments default to,
torch is pinned as the project requires, and the tags in their headers are the chart's images."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from frugalserve.api.models import RaySpec
from tests.chart.conftest import CHART, ROOT, load_values

pytestmark = pytest.mark.unit

DOCKER = ROOT / "docker"
DOCKERFILES = {"operator": DOCKER / "operator.Dockerfile", "serving": DOCKER / "serving.Dockerfile"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def args(path: Path) -> dict[str, str]:
    return dict(
        a.split("=", 1) for word, a in instructions(path) if word == "ARG" and "=" in a
    )


def copied_sources(path: Path) -> list[str]:
    """Sources of the COPY instructions that read the build context (not another stage)."""
    sources = []
    for word, rest in instructions(path):
        if word == "COPY" and "--from=" not in rest:
            parts = [p for p in rest.split() if not p.startswith("--")]
            sources += parts[:-1]
    return sources


def dockerignore_allows(path: Path, source: str) -> bool:
    """The ignore file excludes everything and lets listed paths back in (`!path`)."""
    lines = Path(f"{path}.dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    assert "*" in lines
    return source.rstrip("/") in allowed


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_copied_files_exist_and_reach_the_context(image: str) -> None:
    path = DOCKERFILES[image]
    sources = copied_sources(path)
    assert {"pyproject.toml", "frugalserve"} <= set(sources)
    assert [s for s in sources if not (ROOT / s).exists()] == []
    assert [s for s in sources if not dockerignore_allows(path, s)] == []


def test_a_missing_file_would_be_reported(tmp_path: Path) -> None:
    # Negative control: a COPY of a file that is not in the repository.
    broken = tmp_path / "x.Dockerfile"
    broken.write_text(DOCKERFILES["operator"].read_text().replace("README.md", "READ_ME.md"))
    assert [s for s in copied_sources(broken) if not (ROOT / s).exists()] == ["READ_ME.md"]


def test_serving_image_runs_the_ray_version_modeldeployments_default_to() -> None:
    path = DOCKERFILES["serving"]
    ray_version = args(path)["RAY_VERSION"]
    assert ray_version == RaySpec.model_fields["ray_version"].default
    bases = [rest.split()[0] for word, rest in instructions(path) if word == "FROM"]
    assert bases and all(b == "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu" for b in bases)
    assert args(path)["PYTHON_TAG"] == "py311"  # the project's target Python (ruff, mypy)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (ray,) = [Requirement(r) for r in project["dependencies"] if r.startswith("ray")]
    assert ray.specifier.contains(ray_version)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_torch_is_pinned_as_the_project_requires(image: str) -> None:
    torch_version = args(DOCKERFILES[image])["TORCH_VERSION"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (torch,) = [Requirement(r) for r in project["dependencies"] if r.startswith("torch")]
    assert torch.specifier.contains(torch_version)
    # The version the project's own environment installs and tests with.
    assert f"torch=={torch_version}" in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_build_command_tags_the_charts_image(image: str) -> None:
    values = load_values()
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    repository = values["operator" if image == "operator" else "serving"]["image"]["repository"]
    command = (f"docker build -f docker/{image}.Dockerfile -t {repository}:{app_version} .")
    assert command in DOCKERFILES[image].read_text()
    assert command in (ROOT / "docs" / "install.md").read_text()


def test_operator_image_user_is_the_charts() -> None:
    users = [rest for word, rest in instructions(DOCKERFILES["operator"]) if word == "USER"]
    context = load_values()["operator"]["podSecurityContext"]
    assert users == [f"{context['runAsUser']}:{context['runAsGroup']}"]
