"""Writers of one process take turns and share commits: threads sharing a SQLite ledger, as a
gateway replica's request threads share it, are served in the order they queued, and writes
queued while a transaction runs commit together in the next one. The negative controls, one
write per transaction behind a plain lock, see threads barge and every write commit alone."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from frugalserve.ledger import Period, TenantLimits
from frugalserve.ledger import sqlite as ledger_sqlite

pytestmark = pytest.mark.ledger

THREADS, PAIRS = 8, 40


def run_clients(tmp_path: Path) -> tuple[list[int], int]:
    """8 threads reserve and settle through one ledger. Returns which thread each settlement
    came from, in the ledger's order, and how many transactions committed."""
    ledger = ledger_sqlite.SQLiteLedger(str(tmp_path / "ledger.db"))
    ledger.configure_tenant("acme", TenantLimits(period=Period.NEVER))
    commits = []
    ledger._conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    start = threading.Barrier(THREADS)

    def client(n: int) -> None:
        start.wait()
        for i in range(PAIRS):
            ledger.reserve("acme", f"{n}-{i}", 1_000, 100)
            ledger.settle(f"{n}-{i}", 500, 10, 20)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger._conn.set_trace_callback(None)
    order = [int(s.request_id.split("-")[0]) for s in ledger.settlements("acme")]
    ledger.close()
    assert len(order) == THREADS * PAIRS
    return order, len(commits)


def longest_streak(order: list[int]) -> int:
    """The longest run of consecutive settlements by one thread while every thread still had
    some to make (up to the first thread's last one)."""
    last = min(max(i for i, n in enumerate(order) if n == client) for client in set(order))
    longest = run = 1
    for before, after in zip(order[:last], order[1 : last + 1], strict=True):
        run = run + 1 if after == before else 1
        longest = max(longest, run)
    return longest


def test_threads_sharing_a_ledger_take_turns_and_share_commits(tmp_path: Path) -> None:
    order, commits = run_clients(tmp_path)
    # between two of a thread's settlements, the others' queued writes went first
    assert longest_streak(order) <= 2
    assert commits < THREADS * PAIRS  # of 2 * THREADS * PAIRS writes


def test_negative_control_a_plain_lock_and_one_write_per_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_sqlite, "_writer_queue", lambda fd: threading.Lock())
    monkeypatch.setattr(ledger_sqlite, "MAX_GROUP", 1)
    order, commits = run_clients(tmp_path)
    assert longest_streak(order) > 2
    assert commits == 2 * THREADS * PAIRS


def test_ledgers_on_one_file_share_one_queue(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    a = ledger_sqlite.SQLiteLedger(str(tmp_path / "one.db"))
    b = ledger_sqlite.SQLiteLedger(str(tmp_path / "sub" / ".." / "one.db"))
    other = ledger_sqlite.SQLiteLedger(str(tmp_path / "two.db"))
    try:
        assert a._writers is b._writers
        assert other._writers is not a._writers
    finally:
        for ledger in (a, b, other):
            ledger.close()
