"""Lint and install the chart with the real Helm library (PyPI `helm-sdkpy`, Helm 4 embedded).

Runs in the Python 3.12 venv `.venv-helm` (helm-sdkpy needs 3.12; `conftest.py` builds it), as a
subprocess of the chart tests, and prints one JSON object. Helm has no offline `template` in
helm-sdkpy, so `install` runs a real `helm install` against kmock's Kubernetes emulator, with
the release stored in memory (HELM_DRIVER=memory): Helm renders, validates the values schema,
creates the CRDs and every object, and returns the release's manifest and NOTES.

    python helm_tool.py lint CHART [-f VALUES]...
    python helm_tool.py install CHART [-f VALUES]... [--release NAME] [--namespace NS]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any

import helm_sdkpy
import kmock
import yaml
from kmock._internal import k8s as kmock_k8s

# Kinds the chart may create that are not in kmock's built-in discovery list.
EXTRA_RESOURCES = {
    "monitoring.coreos.com/v1/podmonitors": kmock.ResourceInfo(
        namespaced=True, kind="PodMonitor", singular="podmonitor", verbs=["create", "get", "list"]
    ),
}


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with two fixes Helm needs: the core group's discovery says `v1` (kmock
    says `/v1`), and created CRDs are Established at once (Helm waits for that)."""

    async def _serve_version(self, request: Any) -> Any:
        payload = await super()._serve_version(request)
        payload["groupVersion"] = payload["groupVersion"].lstrip("/")
        return payload

    async def _serve_create(self, request: Any) -> Any:
        payload = await super()._serve_create(request)
        if payload.get("kind") == "CustomResourceDefinition":
            payload["status"] = {
                "conditions": [
                    {"type": "Established", "status": "True"},
                    {"type": "NamesAccepted", "status": "True"},
                ],
                "acceptedNames": payload["spec"]["names"],
            }
        return payload


def merged_values(files: list[str]) -> dict[str, Any]:
    """The files' values merged in order, the way Helm merges `-f` files."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    values: dict[str, Any] = {}
    for path in files:
        values = merge(values, yaml.safe_load(pathlib.Path(path).read_text()) or {})
    return values


def lint(chart: str, files: list[str]) -> dict[str, Any]:
    """helm lint on a copy of the chart whose values.yaml has the given files merged in (this
    Lint takes no values of its own). helm-sdkpy drops the messages' text: severity and path
    are what it returns (1 info, 2 warning, 3 error)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = pathlib.Path(tmp) / pathlib.Path(chart).name
        shutil.copytree(chart, copy)
        if files:
            base = str(copy / "values.yaml")
            (copy / "values.yaml").write_text(yaml.safe_dump(merged_values([base, *files])))
        config = helm_sdkpy.Configuration(namespace="default")
        result = asyncio.run(helm_sdkpy.Lint(config).run(str(copy)))
    return {
        "messages": [{"severity": m["Severity"], "path": m["Path"]} for m in result["Messages"]],
    }


def discovery(emulator: Emulator) -> None:
    """Serve the API discovery of a current cluster (kmock's bundled list) plus EXTRA_RESOURCES."""
    bundled = pathlib.Path(kmock_k8s.__file__).with_name("resources.json.gz")
    for doc in json.loads(gzip.decompress(bundled.read_bytes())):
        for res in doc["resources"]:
            if "/" not in res["name"]:  # subresources are not discovered separately
                emulator.resources[f"{doc['groupVersion']}/{res['name']}"] = kmock.ResourceInfo(
                    namespaced=res["namespaced"], kind=res["kind"],
                    singular=res["singularName"], verbs=res["verbs"],
                )
    for key, info in EXTRA_RESOURCES.items():
        emulator.resources[key] = info


def kubeconfig(url: str, namespace: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "kmock", "user": {"token": "kmock"}}],
        "contexts": [{"name": "kmock",
                      "context": {"cluster": "kmock", "user": "kmock", "namespace": namespace}}],
    })


async def install(chart: str, files: list[str], release: str, namespace: str) -> dict[str, Any]:
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        discovery(emulator)
        config = helm_sdkpy.Configuration(
            namespace=namespace, kubeconfig=kubeconfig(str(server.url).rstrip("/"), namespace)
        )
        result = await helm_sdkpy.Install(config).run(
            release, chart, values=merged_values(files), wait=False, timeout=60,
        )
        created = sorted(
            [obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]]
            for obj in (dict(o) for o in emulator.objects.values())
        )
    return {"manifest": result["manifest"], "notes": result["info"].get("notes", ""),
            "created": created}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["lint", "install"])
    parser.add_argument("chart")
    parser.add_argument("-f", "--values", action="append", default=[])
    parser.add_argument("--release", default="frugalserve")
    parser.add_argument("--namespace", default="frugalserve-system")
    args = parser.parse_args()
    if os.environ.get("HELM_DRIVER") != "memory":
        # Keep the release record in this process. Helm reads the variable from the environment
        # the process started with, so restart with it set.
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "HELM_DRIVER": "memory"})
    try:
        if args.command == "lint":
            out = lint(args.chart, args.values)
        else:
            out = asyncio.run(install(args.chart, args.values, args.release, args.namespace))
    except helm_sdkpy.HelmError as exc:
        out = {"error": str(exc)[:4000]}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
