"""Starting `worker.py` client processes together and collecting what they report."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from .conftest import Backend


@contextmanager
def started(backend: Backend, count: int, *args: str) -> Iterator[list[subprocess.Popen[str]]]:
    """`count` workers, each ready and waiting for the go line; killed on exit if still alive."""
    with ExitStack() as stack:
        procs = [
            stack.enter_context(
                subprocess.Popen(
                    [*backend.worker_args(), "--seed", str(i), *args],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            for i in range(count)
        ]
        for p in procs:
            stack.callback(p.kill)
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield procs


def go(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()


def run(backend: Backend, count: int, *args: str) -> list[dict[str, object]]:
    """Start `count` workers at once; each worker's final JSON report."""
    with started(backend, count, *args) as procs:
        go(procs)
        reports = []
        for p in procs:
            out, _ = p.communicate(timeout=240)
            assert p.returncode == 0, out
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
