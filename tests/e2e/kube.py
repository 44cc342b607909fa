"""The Kubernetes side of the e2e flow: the operator tests' API emulator (tests/operator) serving
our CRDs, KubeRay's RayService and Secrets, with the real kopf operator against it, both in an
event loop on a thread of their own, so that tests and the tutorial script call it like `kubectl`
from plain synchronous code while the operator keeps running."""

from __future__ import annotations

import asyncio
import base64
import copy
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kmock
import yaml

from tests.operator.conftest import (
    MODELS,
    RAYSERVICES,
    SECRETS,
    TENANTS,
    Cluster,
    committed_rbac,
    declare,
    running,
)
from tests.operator.emulator import Emulator

T = TypeVar("T")
RESOURCES = {"ModelDeployment": MODELS, "Tenant": TENANTS, "RayService": RAYSERVICES,
             "Secret": SECRETS}


def documents(path: Path) -> Iterator[dict[str, Any]]:
    """The YAML documents of a manifest file, in order (empty ones skipped, as kubectl does)."""
    yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)


def as_stored(doc: dict[str, Any]) -> dict[str, Any]:
    """The object as the API server stores it: a Secret's stringData folded into its data
    (the server does this on write; the emulator does not)."""
    obj = copy.deepcopy(doc)
    obj["metadata"].setdefault("namespace", "default")
    if obj["kind"] == "Secret" and "stringData" in obj:
        data = obj.setdefault("data", {})
        for key, value in obj.pop("stringData").items():
            data[key] = base64.b64encode(value.encode()).decode()
    return obj


class Kube:
    """The emulator and the operator, running until `close()`; kubectl-like calls."""

    def __init__(self, **settings: Any) -> None:
        self._settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._cluster: Cluster | None = None
        self._thread = threading.Thread(target=self._run, name="kube", daemon=True)

    def start(self, timeout_s: float = 60.0) -> None:
        self._thread.start()
        self._ready.wait(timeout_s)
        if self._error is not None:
            raise RuntimeError("the emulator or the operator failed to start") from self._error
        assert self._ready.is_set(), "the operator did not start"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start() / close()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with Emulator() as k, kmock.Server(k):
            declare(k)
            self._cluster = Cluster(k)
            async with running(self._cluster, **self._settings):
                self._ready.set()
                await self._stop.wait()

    def close(self) -> None:
        """Stop the operator and the emulator (re-raising what failed in their thread)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.ident is not None:
            self._thread.join(60)
        if self._error is not None:
            raise RuntimeError("the emulator or the operator failed") from self._error

    def _call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(30)

    @property
    def cluster(self) -> Cluster:
        assert self._cluster is not None
        return self._cluster

    def apply(self, path: Path) -> list[str]:
        """`kubectl apply -f path` for new objects: each document created through the API, in
        order; kubectl's lines (`<kind>.<group>/<name> created`)."""
        lines = []
        for doc in documents(path):
            obj = as_stored(doc)
            self._call(lambda obj=obj: self.cluster.create(RESOURCES[obj["kind"]], obj))
            group = obj["apiVersion"].rpartition("/")[0]
            kind = obj["kind"].lower() + (f".{group}" if group else "")
            lines.append(f"{kind}/{obj['metadata']['name']} created")
        return lines

    def patch(self, kind: str, name: str, patch: dict[str, Any], sub: str = "") -> dict[str, Any]:
        """`kubectl patch <kind> <name> --type merge -p <patch>` (`sub="status"`: the status
        subresource, as a controller writes it)."""
        return self._call(lambda: self.cluster.patch(RESOURCES[kind], "default", name, patch,
                                                     sub))

    def get(self, kind: str, name: str) -> dict[str, Any]:
        """A copy of the object (AssertionError when it does not exist)."""
        obj = self._call(self._get(kind, name))
        assert obj is not None, f"no {kind} {name}"
        return obj

    def _get(self, kind: str, name: str) -> Callable[[], Coroutine[Any, Any, Any]]:
        async def read() -> Any:
            return copy.deepcopy(self.cluster.get(RESOURCES[kind], name))
        return read

    def list(self, kind: str) -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:
            return copy.deepcopy(sorted(self.cluster.all(RESOURCES[kind]),
                                        key=lambda o: o["metadata"]["name"]))
        return self._call(read)

    def wait_for(self, kind: str, name: str, check: Callable[[dict[str, Any]], Any],
                 timeout_s: float = 30.0) -> dict[str, Any]:
        """The object once check(object) is truthy."""
        deadline = time.monotonic() + timeout_s
        while True:
            obj = self._call(self._get(kind, name))
            if obj is not None and check(obj):
                return obj
            assert time.monotonic() < deadline, f"{kind} {name} never passed the check: {obj}"
            time.sleep(0.1)

    def rbac_gaps(self) -> set[tuple[str, str, str]]:
        """The operator's requests not granted by the chart's RBAC (fixture of the operator
        tests)."""
        async def used() -> set[tuple[str, str, str]]:
            return set(self.cluster.k.verbs)
        return self._call(used) - committed_rbac()
