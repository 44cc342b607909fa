"""A local Ray cluster of the e2e flow's own, in the part KubeRay plays in a real cluster: started
with `ray start --head` under token authentication (Ray 2.60's default for new clusters), on a
block of ports of its own and in a temp dir of its own, so that it never meets another Ray on
the machine (the serving tests' in-process one included); a RayService's serveConfigV2 is
deployed to it through the Serve REST API (`PUT /api/serve/applications/`, the call KubeRay
makes); stopped by the process ids it started, never with `ray stop` (which stops every Ray on
the machine)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

RAY_BIN = Path(sys.executable).parent
PORT_NAMES = ("port", "dashboard-port", "ray-client-server-port", "node-manager-port",
              "object-manager-port", "runtime-env-agent-port", "dashboard-agent-grpc-port",
              "dashboard-agent-listen-port", "metrics-export-port")
WORKER_PORTS = 40
"""Worker processes (replicas, the Serve controller and proxy) listen in a range of this size."""
GRACE_S = 3.0


@dataclass(frozen=True)
class Ports:
    """A block of ports from `base`: Ray's own, Serve's HTTP port, then the workers' range.
    Blocks are far from Ray's defaults (6379, 8265, 10001, 8000, 10002-19999, 52365)."""

    base: int

    def ray(self) -> dict[str, int]:
        return {name: self.base + i for i, name in enumerate(PORT_NAMES)}

    @property
    def dashboard(self) -> int:
        return self.ray()["dashboard-port"]

    @property
    def gcs(self) -> int:
        return self.ray()["port"]

    @property
    def serve(self) -> int:
        return self.base + len(PORT_NAMES)

    @property
    def workers(self) -> tuple[int, int]:
        first = self.serve + 1
        return first, first + WORKER_PORTS - 1

    def all(self) -> list[int]:
        first, last = self.workers
        return [*self.ray().values(), self.serve, *range(first, last + 1)]


def busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def cluster_cpus(rayservice: Mapping[str, Any]) -> int:
    """The CPUs of the Ray cluster a RayService asks for: its head plus every worker pod."""
    config = rayservice["spec"]["rayClusterConfig"]
    head = config["headGroupSpec"]["template"]["spec"]["containers"][0]
    cpus = float(head["resources"]["requests"]["cpu"])
    for group in config["workerGroupSpecs"]:
        worker = group["template"]["spec"]["containers"][0]
        cpus += group["replicas"] * float(worker["resources"]["requests"]["cpu"])
    return int(cpus)


class RayCluster:
    """`ray start --head` with token auth in a temp dir; Serve on `ports.serve`."""

    def __init__(self, ports: Ports, num_cpus: int, env: Mapping[str, str] | None = None
                 ) -> None:
        self.ports, self.num_cpus = ports, num_cpus
        self.dir = Path(tempfile.mkdtemp(prefix="fs-e2e-ray-"))  # short: Ray's socket paths
        self.token = secrets.token_hex(32)
        token_path = self.dir / "auth_token"
        token_path.write_text(self.token)
        token_path.chmod(0o600)
        # Nothing of another Ray this process may know of (the serving tests' in-process one).
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env = {**inherited, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path),
                    **(env or {})}
        self.dashboard = f"http://127.0.0.1:{ports.dashboard}"
        self.base_url = f"http://127.0.0.1:{ports.serve}"
        self.http = httpx.Client(base_url=self.dashboard, timeout=30,
                                 headers={"Authorization": f"Bearer {self.token}"})
        self._head: subprocess.Popen[bytes] | None = None
        self._pids: set[int] = set()

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the head (blocking in its own process group) and Serve's HTTP proxy."""
        taken = [p for p in self.ports.all() if busy(p)]
        assert not taken, f"ports of the e2e Ray cluster already in use: {taken}"
        first, last = self.ports.workers
        args = [str(RAY_BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
                f"--num-cpus={self.num_cpus}", "--num-gpus=0", "--dashboard-host=127.0.0.1",
                f"--temp-dir={self.dir / 'ray'}", f"--min-worker-port={first}",
                f"--max-worker-port={last}",
                *(f"--{name}={port}" for name, port in self.ports.ray().items())]
        with (self.dir / "ray-start.log").open("wb") as log:
            self._head = subprocess.Popen(args, env=self.env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self._answers("/api/version"):
            assert self._head.poll() is None, self.log_tail()
            assert time.monotonic() < deadline, f"Ray did not start: {self.log_tail()}"
            time.sleep(0.5)
        # Serve's proxy on this cluster's port (KubeRay's head pods use Serve's default, 8000);
        # a later PUT of a config keeps the running proxy's options.
        subprocess.run([str(RAY_BIN / "serve"), "start", f"--address=127.0.0.1:{self.ports.gcs}",
                        "--http-host=127.0.0.1", f"--http-port={self.ports.serve}"],
                       env=self.env, check=True, capture_output=True, timeout=timeout_s)
        self._remember()

    def _answers(self, path: str) -> bool:
        try:
            return self.http.get(path, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _remember(self) -> None:
        """Note every process of this cluster so far (replicas are added by each deploy)."""
        if self._head is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                head = psutil.Process(self._head.pid)
                self._pids.update(p.pid for p in head.children(recursive=True))

    def log_tail(self, chars: int = 3000) -> str:
        path = self.dir / "ray-start.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def deploy(self, serve_config_v2: str) -> None:
        """PUT the RayService's serveConfigV2, parsed from its YAML text and otherwise as is."""
        response = self.http.put("/api/serve/applications/", json=yaml.safe_load(serve_config_v2))
        assert response.status_code == 200, (response.status_code, response.text)

    def applications(self) -> dict[str, Any]:
        """Serve's detailed status of every application (GET /api/serve/applications/)."""
        response = self.http.get("/api/serve/applications/")
        response.raise_for_status()
        apps: dict[str, Any] = response.json()["applications"]
        return apps

    def wait_running(self, app: str, timeout_s: float = 300.0) -> dict[str, Any]:
        """The application's details once it and every deployment in it are healthy."""
        deadline = time.monotonic() + timeout_s
        while True:
            details = self.applications().get(app) or {}
            status = details.get("status")
            assert status not in ("DEPLOY_FAILED", "UNHEALTHY"), details.get("message")
            deployments = (details.get("deployments") or {}).values()
            if status == "RUNNING" and all(d["status"] == "HEALTHY" for d in deployments):
                self._remember()
                return details
            assert time.monotonic() < deadline, f"{app} not running after {timeout_s}s: {details}"
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM this cluster's processes (the head's process group and every process seen
        under it), SIGKILL what outlives a short grace period (Ray's graceful shutdown takes
        ~15 s, `ray stop` waits as long; nothing of a test cluster needs it); remove the dir."""
        self._remember()
        self.http.close()
        procs = []
        for pid in self._pids | ({self._head.pid} if self._head else set()):
            with contextlib.suppress(psutil.NoSuchProcess):
                procs.append(psutil.Process(pid))
        self._signal(signal.SIGTERM, procs)
        _, left = psutil.wait_procs(procs, timeout=GRACE_S)
        self._signal(signal.SIGKILL, left)
        if self._head is not None:
            self._head.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _signal(self, sig: int, procs: list[psutil.Process]) -> None:
        """sig to the head's process group and to each of procs still alive."""
        if self._head is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._head.pid, sig)
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(sig)
