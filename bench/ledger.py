"""Benchmark of the budget ledger: reserve+settle pairs per second and admission latency for
each backend with 1 client, 8 client threads sharing one ledger (as a gateway replica issues
them: each request's ledger call runs in a worker thread) and 8 client processes, beside this
run's floors measured the same ways (raw `redis-benchmark` SET with AOF always, whose 8
connections share one process; one durable SQLite commit). Appends to docs/benchmarks.md.

Run: python bench/ledger.py [--seconds 3] [--no-doc]
The last line of output is one JSON object."""

from __future__ import annotations

import argparse
import csv
import io
import json
import multiprocessing as mp
import os
import platform
import queue
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from frugalserve.ledger import Ledger, Period, TenantLimits
from frugalserve.ledger.localredis import LocalRedis
from frugalserve.ledger.redis_backend import RedisLedger
from frugalserve.ledger.sqlite import SQLiteLedger

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
SHAPES = ((1, "process"), (8, "threads"), (8, "processes"))
"""(clients, how they run): one process, threads of one process, or processes."""


@dataclass
class Result:
    name: str
    clients: int
    how: str
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    pair_p99_ms: float | None = None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def open_backend(kind: str, target: str) -> Ledger:
    return SQLiteLedger(target) if kind == "sqlite" else RedisLedger.from_url(target)


def ledger_client(
    ledger: Ledger | tuple[str, str], seconds: float, barrier: Any, out: Any
) -> None:
    """Reserve and settle as fast as possible for `seconds`; report latencies. `ledger` is the
    one this process's client threads share, or (kind, target) to open one of its own."""
    own = isinstance(ledger, tuple)
    if isinstance(ledger, tuple):
        ledger = open_backend(*ledger)
    reserve_s: list[float] = []
    pair_s: list[float] = []
    client = uuid.uuid4().hex  # thread idents are reused: not unique across runs
    barrier.wait()
    end = time.perf_counter() + seconds
    i = 0
    while (t0 := time.perf_counter()) < end:
        rid = f"{client}-{i}"
        ledger.reserve("bench", rid, 1_000, 200, model="m", price_version="p1")
        t1 = time.perf_counter()
        ledger.settle(rid, 700, 100, 50)
        reserve_s.append(t1 - t0)
        pair_s.append(time.perf_counter() - t0)
        i += 1
    if own:
        ledger.close()
    out.put((reserve_s, pair_s))


def commit_client(path: str, seconds: float, barrier: Any, out: Any) -> None:
    """The SQLite floor: one durable (WAL, synchronous=FULL) single-row commit per op."""
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    latencies: list[float] = []
    barrier.wait()
    end = time.perf_counter() + seconds
    while (t0 := time.perf_counter()) < end:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO floor (v) VALUES (?)", (t0,))
        db.execute("COMMIT")
        latencies.append(time.perf_counter() - t0)
    db.close()
    out.put((latencies, latencies))


def run_clients(
    target: Any, args: tuple[Any, ...], clients: int, how: str, seconds: float
) -> list[Any]:
    """Run `clients` copies of `target`, each with its own ledger or connection, as threads of
    this process or as forked processes; what each one reports."""
    workers: list[threading.Thread] | list[mp.Process]
    if how == "threads":
        barrier: Any = threading.Barrier(clients)
        out: Any = queue.Queue()
        workers = [
            threading.Thread(target=target, args=(*args, seconds, barrier, out))
            for _ in range(clients)
        ]
    else:
        ctx = mp.get_context("fork")
        barrier, out = ctx.Barrier(clients), ctx.Queue()
        workers = [
            ctx.Process(target=target, args=(*args, seconds, barrier, out)) for _ in range(clients)
        ]
    for w in workers:
        w.start()
    results = [out.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join()
    return results


def measure(
    name: str, target: Any, args: tuple[Any, ...], clients: int, how: str, seconds: float
) -> Result:
    results = run_clients(target, args, clients, how, seconds)
    first = [v for r in results for v in r[0]]
    pairs = [v for r in results for v in r[1]]
    return Result(
        name, clients, how, len(first) / seconds, pct(first, 0.5), pct(first, 0.99),
        pct(pairs, 0.99),
    )


def measure_ledger(kind: str, target: str, clients: int, how: str, seconds: float) -> Result:
    """The ledger's clients: threads share one ledger, as a gateway replica's requests do; a
    process opens its own."""
    if how != "threads":
        return measure(f"{kind} ledger", ledger_client, ((kind, target),), clients, how, seconds)
    shared = open_backend(kind, target)
    try:
        return measure(f"{kind} ledger", ledger_client, (shared,), clients, how, seconds)
    finally:
        shared.close()


def redis_benchmark(port: int, clients: int) -> Result:
    """Raw `SET` through redis-benchmark against the same AOF-always server: its `clients`
    connections share one process."""
    n = str(4_000 * clients)
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", str(clients), "-n", n, "-t", "set", "--csv"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    row = next(r for r in csv.DictReader(io.StringIO(out)) if r["test"] == "SET")
    return Result(
        "redis-benchmark SET (floor)",
        clients,
        "connections" if clients > 1 else "connection",
        float(row["rps"]),
        float(row["p50_latency_ms"]),
        float(row["p99_latency_ms"]),
    )


def bench_redis(workdir: Path, seconds: float, appendfsync: str = "always") -> list[Result]:
    """The Redis ledger and its floor on one server; names carry the fsync policy."""
    server = LocalRedis(workdir / f"redis-{appendfsync}", appendfsync=appendfsync)
    server.start()
    try:
        setup = RedisLedger.from_url(server.url)
        setup.configure_tenant("bench", TenantLimits(limit_micros=10**15, period=Period.NEVER))
        setup.close()
        out = []
        for c, how in SHAPES:
            if how != "processes":  # the floor's 8 connections are in one process anyway
                out.append(redis_benchmark(server.port, c))
            out.append(measure_ledger("redis", server.url, c, how, seconds))
        suffix = "" if appendfsync == "always" else f" [appendfsync {appendfsync}]"
        for r in out:
            r.name += suffix
        return out
    finally:
        server.stop()


def bench_sqlite(workdir: Path, seconds: float) -> list[Result]:
    floor_db = str(workdir / "floor.db")
    with sqlite3.connect(floor_db) as db:
        db.execute("CREATE TABLE floor (v REAL)")
    db.close()
    ledger_db = str(workdir / "ledger.db")
    setup = SQLiteLedger(ledger_db)
    setup.configure_tenant("bench", TenantLimits(limit_micros=10**15, period=Period.NEVER))
    setup.close()
    out = []
    for c, how in SHAPES:
        floor = "sqlite durable commit (floor)"
        out.append(measure(floor, commit_client, (floor_db,), c, how, seconds))
        out.append(measure_ledger("sqlite", ledger_db, c, how, seconds))
    return out


def table(results: list[Result]) -> str:
    lines = [
        "| what | clients | ops/s (ledger: pairs/s) | p50 ms | p99 ms | pair p99 ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        pair = "" if r.pair_p99_ms is None or "floor" in r.name else f"{r.pair_p99_ms:.3f}"
        lines.append(
            f"| {r.name} | {r.clients} {r.how} | {r.ops_per_s:,.0f} | {r.p50_ms:.3f} | "
            f"{r.p99_ms:.3f} | {pair} |"
        )
    return "\n".join(lines)


def summary(results: list[Result]) -> dict[str, float]:
    """The targets' figures at 8 clients: as threads of one process (the keys the issue names),
    then as processes (the same keys ending in `_8p`)."""

    def figures(how: str, suffix: str) -> dict[str, float]:
        def get(name: str) -> Result:
            return next(r for r in results if (r.name, r.clients, r.how) == (name, 8, how))

        redis, sqlite = get("redis ledger"), get("sqlite ledger")
        floor = get("sqlite durable commit (floor)")
        return {
            f"redis_p99_ms_{suffix}": round(redis.p99_ms, 3),
            f"sqlite_p99_ms_{suffix}": round(sqlite.p99_ms, 3),
            # time per ledger op (a pair is two durable commits) over time per floor commit
            f"sqlite_vs_commit_floor{'' if suffix == '8c' else '_' + suffix}": round(
                floor.ops_per_s / (2 * sqlite.ops_per_s), 3
            ),
            f"redis_pairs_per_s_{suffix}": round(redis.ops_per_s, 1),
            f"sqlite_pairs_per_s_{suffix}": round(sqlite.ops_per_s, 1),
        }

    return figures("threads", "8c") | figures("processes", "8p")


def append_doc(command: str, results: list[Result], line: dict[str, float]) -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    section = (
        f"\n## Budget ledger ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)\n\n"
        f"Command: `{command}`  \nMachine: {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}.  \n"
        "Ledger rows: reserve+settle pairs per second; p50/p99 are of `reserve` (admission), "
        "pair p99 of the whole pair. Floors come from the same run on the same disk: "
        "`redis-benchmark -t set` against the same AOF `appendfsync always` server, and "
        "single-row `BEGIN IMMEDIATE; INSERT; COMMIT` in WAL with `synchronous=FULL`. Targets: "
        "Redis admission p99 < 1 ms at 8 clients; SQLite within 2x of one durable commit per "
        "operation (`sqlite_vs_commit_floor` <= 2). 8 clients run as threads sharing one ledger, "
        "the way a gateway replica's requests call the ledger from worker threads (the JSON's "
        "`_8c` keys; Redis: a connection per thread, SQLite: one connection), and as 8 "
        "processes with a ledger each (`_8p`); each floor client has its own connection. The "
        "JSON uses the durable `always` rows; the `everysec` rows are for comparison only (they "
        "may lose the last second on a power loss).\n\n"
        f"{table(results)}\n\n```json\n{json.dumps(line)}\n```\n"
    )
    DOC.write_text(text.rstrip("\n") + "\n" + section)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    p.add_argument("--no-doc", action="store_true", help="do not append to docs/benchmarks.md")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        results = (
            bench_redis(Path(tmp), args.seconds)
            + bench_redis(Path(tmp), args.seconds, "everysec")
            + bench_sqlite(Path(tmp), args.seconds)
        )
    line = summary(results)
    print(table(results))
    if not args.no_doc:
        append_doc("python " + " ".join(sys.argv), results, line)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
