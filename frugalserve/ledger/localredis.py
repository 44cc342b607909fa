"""Run a private `redis-server` process (AOF on, `appendfsync always`) in a folder, on a free
port: used by the ledger tests and `bench/ledger.py`, never a shared instance."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


class RedisServerMissing(RuntimeError):
    """`redis-server` is not installed (Debian package `redis-server`)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRedis:
    """One redis-server child process; `kill9()` and `start()` again to test crash recovery."""

    def __init__(self, workdir: Path, *, appendfsync: str = "always", port: int = 0) -> None:
        self.workdir = workdir
        self.appendfsync = appendfsync
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerMissing(
                "redis-server not found on PATH: install the Debian package `redis-server` "
                "(apt-get install -y redis-server); the ledger tests need a real server"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if client.ping() and client.info("persistence")["loading"] == 0:
                        return
                except redis.ConnectionError:
                    pass
                if self.process is None or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited; see {self.workdir / 'redis.log'}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server on port {self.port} did not start")
                time.sleep(0.02)
        finally:
            client.close()

    def kill9(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        """Kill the server by its pid and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
