"""Writers of one process take turns: threads sharing a SQLite ledger, as a gateway replica's
request threads share it, are served in arrival order, so none waits behind many writes of
another. The negative control swaps the queue for a plain lock and sees threads barge."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from frugalserve.ledger import Period, TenantLimits
from frugalserve.ledger import sqlite as ledger_sqlite

pytestmark = pytest.mark.ledger

THREADS, PAIRS = 8, 40


def longest_streak(tmp_path: Path) -> int:
    """8 threads reserve and settle through one ledger; the longest run of consecutive writes
    by one thread while every thread still had writes to do. The ledger reads its clock once
    inside each write transaction, so the clock sees the order of writes."""
    writers: list[int] = []

    def clock() -> float:
        writers.append(threading.get_ident())
        return time.time()

    ledger = ledger_sqlite.SQLiteLedger(str(tmp_path / "ledger.db"), clock=clock)
    ledger.configure_tenant("acme", TenantLimits(period=Period.NEVER))
    start = threading.Barrier(THREADS)

    def client(n: int) -> None:
        start.wait()
        for i in range(PAIRS):
            ledger.reserve("acme", f"t{n}-{i}", 1_000, 100)
            ledger.settle(f"t{n}-{i}", 500, 10, 20)

    writers.clear()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.close()
    assert len(writers) == THREADS * PAIRS * 2
    # up to the first thread's last write, every thread still wanted the lock
    last = min(max(i for i, w in enumerate(writers) if w == ident) for ident in set(writers))
    longest = run = 1
    for before, after in zip(writers[:last], writers[1 : last + 1], strict=True):
        run = run + 1 if after == before else 1
        longest = max(longest, run)
    return longest


def test_threads_sharing_a_ledger_take_turns(tmp_path: Path) -> None:
    # A thread's reserve and settle may follow each other when no other thread was queued
    # yet (it was still between its own calls), never a longer run.
    assert longest_streak(tmp_path) <= 2


def test_negative_control_a_plain_lock_lets_a_thread_barge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_sqlite, "_writer_queue", lambda fd: threading.Lock())
    assert longest_streak(tmp_path) > 2


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
