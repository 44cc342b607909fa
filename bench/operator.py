"""Operator throughput: N ModelDeployments applied at once against the Kubernetes emulator
(tests/operator/emulator.py) with the real kopf operator running; measures the seconds until
every RayService exists and the operator's API writes per object once it is quiet. Appends a
section to docs/benchmarks.md; the last stdout line is one JSON object.

Run from the repository root: `python bench/operator.py` (targets: 500 objects in < 30 s,
<= 4 writes per object)."""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import kmock  # noqa: E402

from tests.operator.conftest import (  # noqa: E402
    MODELS,
    RAYSERVICES,
    Cluster,
    declare,
    model,
    running,
    settle,
)
from tests.operator.emulator import Emulator  # noqa: E402


async def measure(n: int) -> dict[str, float]:
    """Apply n ModelDeployments at once; time until all n RayServices exist."""
    async with Emulator() as k, kmock.Server(k):
        declare(k)
        cluster = Cluster(k)
        async with running(cluster):
            started = time.monotonic()
            await asyncio.gather(*(cluster.create(MODELS, model(f"md-{i:04d}"))
                                   for i in range(n)))
            while len(cluster.all(RAYSERVICES)) < n:
                await asyncio.sleep(0.05)
            seconds = time.monotonic() - started
            await settle(cluster, quiet=2.0, timeout=120)
            writes = len(cluster.operator_writes())
    return {f"seconds_{n}": round(seconds, 2),
            "writes_per_object": round(writes / n, 2)}


def record(result: dict[str, float], n: int, command: str) -> None:
    """Append this run to docs/benchmarks.md."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"\n## Operator: {n} ModelDeployments at once ({when})\n\n"
        f"Command: `{command}`  \n"
        f"Machine: CPUs shared with other work, {platform.platform()}, Python "
        f"{platform.python_version()}.  \n"
        "The real kopf operator and the extended kmock emulator (tests/operator/emulator.py) "
        "in one process; seconds from the first POST until every RayService exists; writes "
        "are the operator's POST/PATCH/DELETE requests (RayService create, kopf's annotation "
        "patch, the status patch) once it has gone quiet, divided by the objects. "
        "Targets: < 30 s, <= 4 writes per object.\n\n"
        f"```json\n{json.dumps(result)}\n```\n"
    )
    with (ROOT / "docs" / "benchmarks.md").open("a") as out:
        out.write(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--objects", type=int, default=500, help="ModelDeployments.")
    parser.add_argument("--no-record", action="store_true", help="Skip docs/benchmarks.md.")
    args = parser.parse_args()
    result = asyncio.run(measure(args.objects))
    if not args.no_record:
        record(result, args.objects, "python " + " ".join(["bench/operator.py", *sys.argv[1:]]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
