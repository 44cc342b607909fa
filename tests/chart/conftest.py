"""Fixtures of the chart tests: the `.venv-helm` interpreter (built on first use), and the chart
installed by real Helm into kmock's Kubernetes emulator, one release per values scenario."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "frugalserve"
HELM_VENV = ROOT / ".venv-helm"
REQUIREMENTS = Path(__file__).with_name("requirements-helm.txt")
TOOL = Path(__file__).with_name("helm_tool.py")
NAMESPACE = "frugalserve-system"

# Values scenarios: name -> files under the chart, merged in order (the chart's defaults first).
SCENARIOS: dict[str, tuple[str, ...]] = {
    "default": (),
    "all-values": ("ci/all-values.yaml",),
    "external-ledger": ("ci/external-ledger-values.yaml",),
    "minimal": ("ci/minimal-values.yaml",),
}


def python312() -> str:
    """A Python 3.12 interpreter: pyenv's (its shim on PATH may point elsewhere), else PATH's."""
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = sorted(glob.glob(f"{pyenv_root}/versions/3.12*/bin/python3.12"))
    found = candidates[-1] if candidates else shutil.which("python3.12")
    if found is None:
        raise RuntimeError("helm-sdkpy needs Python 3.12: none in pyenv nor on PATH")
    return found


def ensure_helm_venv() -> Path:
    """`.venv-helm` with requirements-helm.txt installed; rebuilt only when they changed."""
    python = HELM_VENV / "bin" / "python"
    stamp = HELM_VENV / ".requirements"
    wanted = REQUIREMENTS.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    if not python.exists():
        subprocess.run([python312(), "-m", "venv", str(HELM_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True
    )
    stamp.write_text(wanted)
    return python


@pytest.fixture(scope="session")
def helm_python() -> Path:
    return ensure_helm_venv()


def run_tool(python: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [str(python), str(TOOL), *args], check=True, capture_output=True, text=True, cwd=ROOT,
        timeout=300,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@dataclass(frozen=True)
class Release:
    """What `helm install` produced: the rendered objects, NOTES, and what reached the API."""

    objects: list[dict[str, Any]]
    notes: str
    created: list[tuple[str, str, str]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        (obj,) = self.of_kind(kind)
        return obj


def install(python: Path, values: dict[str, Any] | None = None, *files: str) -> dict[str, Any]:
    """Runs the tool's install with the chart files and, last, `values` (a temporary file)."""
    args = ["install", str(CHART), "--namespace", NAMESPACE]
    for name in files:
        args += ["-f", str(CHART / name)]
    if values is None:
        return run_tool(python, *args)
    with tempfile.TemporaryDirectory() as tmp:
        extra = Path(tmp) / "values.yaml"
        extra.write_text(yaml.safe_dump(values))
        return run_tool(python, *args, "-f", str(extra))


@pytest.fixture(scope="session")
def release(helm_python: Path) -> Callable[[str], Release]:
    """The chart installed with one of SCENARIOS (cached for the session)."""

    @cache
    def get(scenario: str) -> Release:
        result = install(helm_python, None, *SCENARIOS[scenario])
        assert "error" not in result, result["error"]
        objects = [doc for doc in yaml.safe_load_all(result["manifest"]) if doc]
        return Release(objects, result["notes"], [tuple(c) for c in result["created"]])

    return get


@pytest.fixture(scope="session")
def install_error(helm_python: Path) -> Callable[[dict[str, Any]], str]:
    """The error of installing the chart with extra values (empty when it installs)."""

    def get(values: dict[str, Any]) -> str:
        return str(install(helm_python, values).get("error", ""))

    return get


def load_values(name: str = "values.yaml") -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CHART / name).read_text())
    return data


