"""A load-generating client process for the ledger's concurrency and crash tests: opens the
ledger named on the command line, waits for a line on stdin, runs one mode, prints JSON."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import redis

from frugalserve.ledger import BudgetExceeded, Ledger, RateLimited
from frugalserve.ledger.redis_backend import RedisLedger
from frugalserve.ledger.sqlite import SQLiteLedger


def open_backend(args: argparse.Namespace) -> Ledger:
    """The parent's ledger, on the parent's clock (real time plus `--offset` seconds)."""
    if args.backend == "sqlite":
        return SQLiteLedger(args.target, clock=lambda: time.time() + args.offset)
    return RedisLedger.from_url(args.target, prefix=args.prefix, time_offset_s=args.offset)


def work(rng: random.Random) -> None:
    time.sleep(rng.uniform(0.002, 0.006))


def reserve_mode(ledger: Ledger, args: argparse.Namespace, rng: random.Random) -> dict[str, int]:
    """Reserve cost_max, work, settle a random actual cost: the real gateway's protocol."""
    admitted = refused = 0
    for i in range(args.n):
        rid = f"{args.tenant}-{os.getpid()}-{i}"
        try:
            ledger.reserve(args.tenant, rid, args.cost_max, 100)
        except BudgetExceeded:
            refused += 1
            continue
        work(rng)
        ledger.settle(rid, rng.randint(args.cost_max // 2, args.cost_max), 10, rng.randint(0, 90))
        admitted += 1
    return {"admitted": admitted, "refused": refused}


def naive_mode(ledger: Ledger, args: argparse.Namespace, rng: random.Random) -> dict[str, int]:
    """Negative control: check spent against the budget, work, then charge (no reservation)."""
    admitted = refused = 0
    for i in range(args.n):
        rid = f"{args.tenant}-{os.getpid()}-{i}"
        if ledger.usage(args.tenant).spent_micros + args.cost_max > args.budget:
            refused += 1
            continue
        work(rng)
        ledger.reserve(args.tenant, rid, args.cost_max, 100)  # the tenant has no limit
        ledger.settle(rid, rng.randint(args.cost_max // 2, args.cost_max), 10, rng.randint(0, 90))
        admitted += 1
    return {"admitted": admitted, "refused": refused}


def rate_mode(ledger: Ledger, args: argparse.Namespace, rng: random.Random) -> dict[str, object]:
    """Reserve and release as fast as possible; report when each admission happened."""
    admitted_at: list[float] = []
    limited = 0
    for i in range(args.n):
        rid = f"{args.tenant}-{os.getpid()}-{i}"
        try:
            r = ledger.reserve(args.tenant, rid, 1, 1, lease_s=60.0)
        except RateLimited:
            limited += 1
            continue
        admitted_at.append(r.expires_at - 60.0)
        ledger.release(rid)
    return {"admitted_at": admitted_at, "limited": limited}


def hold_mode(ledger: Ledger, args: argparse.Namespace, rng: random.Random) -> None:
    """Reserve n requests, say so, then hang until killed."""
    for i in range(args.n):
        ledger.reserve(
            args.tenant, f"{args.tenant}-held-{i}", args.cost_max, 100, lease_s=args.lease
        )
    print("held", flush=True)
    time.sleep(3600)


def durable_mode(ledger: Ledger, args: argparse.Namespace, rng: random.Random) -> None:
    """Reserve and settle until the server dies; print each acknowledged request id."""
    try:
        for i in range(args.n):
            rid = f"{args.tenant}-{os.getpid()}-{i}"
            ledger.reserve(args.tenant, rid, args.cost_max, 100)
            ledger.settle(rid, rng.randint(0, args.cost_max), 10, 20)
            print(rid, flush=True)
    except (redis.ConnectionError, redis.TimeoutError):
        return


MODES = {
    "reserve": reserve_mode,
    "naive": naive_mode,
    "rate": rate_mode,
    "hold": hold_mode,
    "durable": durable_mode,
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=["sqlite", "redis"], required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--prefix", default="")
    p.add_argument("--mode", choices=sorted(MODES), required=True)
    p.add_argument("--tenant", required=True)
    p.add_argument("--n", type=int, default=250)
    p.add_argument("--cost-max", type=int, default=1000)
    p.add_argument("--budget", type=int, default=0)
    p.add_argument("--lease", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offset", type=float, default=0.0)
    args = p.parse_args()
    ledger = open_backend(args)
    print("ready", flush=True)
    sys.stdin.readline()
    result = MODES[args.mode](ledger, args, random.Random(args.seed))
    if result is not None:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
