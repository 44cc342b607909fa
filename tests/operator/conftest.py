"""Harness of the operator tests: the extended kmock emulator serving our CRDs, KubeRay's
RayService, Secrets, Events and Namespaces; a client acting as `kubectl`; and the real kopf
operator running in the test's event loop. Every (verb, resource) the operator uses is
checked against tests/fixtures/operator-rbac.json."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest

from frugalserve.operator.context import Context
from frugalserve.operator.handlers import register
from frugalserve.operator.kube import api_client
from frugalserve.operator.settings import OperatorSettings
from tests.operator.emulator import TEST_AGENT, Emulator

RBAC_FILE = Path(__file__).resolve().parents[1] / "fixtures" / "operator-rbac.json"
MODELS = kmock.resource("frugalserve.io", "v1alpha1", "modeldeployments")
TENANTS = kmock.resource("frugalserve.io", "v1alpha1", "tenants")
RAYSERVICES = kmock.resource("ray.io", "v1", "rayservices")
SECRETS = kmock.resource("", "v1", "secrets")
EVENTS = kmock.resource("", "v1", "events")
ALL_VERBS = {"list", "watch", "get", "create", "patch", "delete"}
REGEN = os.environ.get("FRUGALSERVE_REGEN") == "1"
RECORDED: set[tuple[str, str, str]] = set()
"""Every (apiGroup, resource, verb) the operator used in this session's tests."""


def committed_rbac() -> set[tuple[str, str, str]]:
    return {(e["apiGroup"], e["resource"], e["verb"]) for e in json.loads(RBAC_FILE.read_text())}


def pytest_sessionfinish(session: pytest.Session) -> None:
    """FRUGALSERVE_REGEN=1 rewrites the RBAC fixture from what the operator used."""
    if REGEN and RECORDED:
        rows = [{"apiGroup": g, "resource": r, "verb": v} for g, r, v in sorted(RECORDED)]
        RBAC_FILE.write_text(json.dumps(rows, indent=1) + "\n")


def declare(k: Emulator) -> None:
    """The resources the operator and the tests touch (kopf waits for v1/namespaces)."""
    k.resources["frugalserve.io/v1alpha1/modeldeployments"] = kmock.ResourceInfo(
        kind="ModelDeployment", namespaced=True, verbs=ALL_VERBS, subresources={"status"})
    k.resources["frugalserve.io/v1alpha1/tenants"] = kmock.ResourceInfo(
        kind="Tenant", namespaced=True, verbs=ALL_VERBS, subresources={"status"})
    k.resources["ray.io/v1/rayservices"] = kmock.ResourceInfo(
        kind="RayService", namespaced=True, verbs=ALL_VERBS, subresources={"status"})
    k.resources["v1/secrets"] = kmock.ResourceInfo(kind="Secret", namespaced=True,
                                                   verbs=ALL_VERBS)
    k.resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True,
                                                  verbs=ALL_VERBS)
    k.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False,
                                                      verbs=ALL_VERBS)


class Cluster:
    """The emulator plus `kubectl`-like helpers (their requests carry TEST_AGENT, so they stay
    out of the record of the operator's requests)."""

    def __init__(self, k: Emulator) -> None:
        self.k = k

    @property
    def url(self) -> str:
        return str(self.k.url).rstrip("/")

    @staticmethod
    def path(resource: Any, namespace: str, name: str = "", sub: str = "") -> str:
        base = "/api/v1" if resource.group == "" else f"/apis/{resource.group}/{resource.version}"
        return f"{base}/namespaces/{namespace}/{resource.plural}" + \
            (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    async def _call(self, method: str, path: str, body: Any, content_type: str) -> Any:
        headers = {"Content-Type": content_type, "User-Agent": TEST_AGENT}
        async with self.k.request(method, path, json=body, headers=headers) as response:
            data = await response.json()
            assert response.status < 400, (response.status, data)
            return data

    async def create(self, resource: Any, obj: dict[str, Any]) -> dict[str, Any]:
        namespace = obj["metadata"].get("namespace", "default")
        result: dict[str, Any] = await self._call(
            "POST", self.path(resource, namespace), obj, "application/json")
        return result

    async def patch(self, resource: Any, namespace: str, name: str, patch: dict[str, Any],
                    sub: str = "") -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "PATCH", self.path(resource, namespace, name, sub), patch,
            "application/merge-patch+json")
        return result

    async def delete(self, resource: Any, namespace: str, name: str) -> None:
        await self._call("DELETE", self.path(resource, namespace, name), None, "application/json")

    def get(self, resource: Any, name: str, namespace: str = "default") -> dict[str, Any] | None:
        key = (resource, namespace, name)
        if key not in self.k.objects or self.k.objects[key].deleted:
            return None
        return self.k.objects[key].raw

    def status(self, resource: Any, name: str) -> dict[str, Any]:
        """The object's status ({} while absent)."""
        return dict((self.get(resource, name) or {}).get("status") or {})

    def all(self, resource: Any) -> list[dict[str, Any]]:
        return [obj.raw for (res, _, _), obj in self.k.objects.items()
                if res == resource and not obj.deleted]

    def operator_writes(self) -> list[tuple[str, str]]:
        return list(self.k.writes)


def model(name: str, **spec: Any) -> dict[str, Any]:
    """A small valid ModelDeployment manifest (builtin model on CPU unless overridden)."""
    base: dict[str, Any] = {"model": {"source": "builtin://tiny-dense"},
                            "resources": {"gpusPerReplica": 0}}
    return {"apiVersion": "frugalserve.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": "default"}, "spec": {**base, **spec}}


def secret(name: str, key: str, namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name,
            "namespace": namespace}, "data": {"api-key": base64.b64encode(key.encode()).decode()}}


async def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll check() until it returns something truthy (then return it) or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        await asyncio.sleep(0.05)


async def settle(cluster: Cluster, quiet: float = 1.0, timeout: float = 20.0) -> None:
    """Wait until the operator has made no write for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    seen, since = len(cluster.k.writes), time.monotonic()
    while time.monotonic() - since < quiet:
        await asyncio.sleep(0.1)
        if len(cluster.k.writes) != seen:
            seen, since = len(cluster.k.writes), time.monotonic()
        assert time.monotonic() < deadline, "the operator never went quiet"


@pytest.fixture()
async def cluster() -> AsyncIterator[Cluster]:
    async with Emulator() as k, kmock.Server(k):
        declare(k)
        yield Cluster(k)
        RECORDED.update(k.verbs)
        missing = k.verbs - committed_rbac()
        assert REGEN or not missing, f"not in {RBAC_FILE} (FRUGALSERVE_REGEN=1): {missing}"


class NotKopfs(Collection["asyncio.Task[Any]"]):
    """Tasks kopf's teardown must not wait for: those that existed before it started and the
    emulator's HTTP request handlers (created later, ended by the test's own teardown)."""

    def __init__(self, before: set[asyncio.Task[Any]]) -> None:
        self._before = before

    def __contains__(self, task: object) -> bool:
        if task in self._before:
            return True
        coro = task.get_coro() if isinstance(task, asyncio.Task) else None
        return getattr(coro, "__qualname__", "").startswith("RequestHandler.")

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(self._before)

    def __len__(self) -> int:
        return len(self._before)


OperatorFactory = Callable[..., contextlib.AbstractAsyncContextManager[Context]]


@contextlib.asynccontextmanager
async def running(cluster: Cluster, **overrides: Any) -> AsyncIterator[Context]:
    """The real kopf operator, in this event loop, against cluster, until the block ends."""
    values: dict[str, Any] = {"cost_interval_s": 3600, "tenant_interval_s": 3600, **overrides}
    ctx = Context.build(OperatorSettings(**values), api_client(cluster.url))
    registry = register(ctx)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=cluster.url, insecure=True)

    stop, ready = asyncio.Event(), asyncio.Event()
    ignored = NotKopfs(asyncio.all_tasks())
    tasks = await kopf.spawn_tasks(registry=registry, clusterwide=True, standalone=True,
                                   stop_flag=stop, ready_flag=ready)
    runner = asyncio.create_task(kopf.run_tasks(tasks, ignored=ignored))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield ctx
    finally:
        stop.set()
        await asyncio.wait_for(runner, 20)


@pytest.fixture()
def operator(cluster: Cluster) -> OperatorFactory:
    """`async with operator(**settings) as ctx:` runs the real kopf operator against cluster."""
    return functools.partial(running, cluster)
