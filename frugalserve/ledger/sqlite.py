"""SQLite ledger backend: the embedded default of local mode; one database file shared safely
by many processes on one machine (WAL, synchronous=FULL, every write in BEGIN IMMEDIATE).
Writers queue first in arrival order within their process (`_FairLock`, one per database
file), then across processes on a `<db>-writelock` file lock; the writes a ledger's threads
queue while a transaction runs commit together in its next one (group commit)."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TypeVar, cast

from . import validate
from .periods import period_bounds, utc
from .protocol import clamp, remaining
from .types import (
    BudgetExceeded,
    DuplicateRequest,
    Period,
    RateLimited,
    Reservation,
    Settlement,
    TenantLimits,
    Totals,
    UnknownReservation,
    UnknownTenant,
    Usage,
)

log = logging.getLogger(__name__)

MINUTE_US = 60_000_000
MAX_GROUP = 64
"""Most queued writes that one transaction commits together."""

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
  name TEXT PRIMARY KEY,
  limit_micros INTEGER, limit_tokens INTEGER, period TEXT NOT NULL,
  requests_per_minute INTEGER, tokens_per_minute INTEGER,
  period_start_us INTEGER NOT NULL, period_end_us INTEGER,
  spent_micros INTEGER NOT NULL, reserved_micros INTEGER NOT NULL,
  tokens_prompt INTEGER NOT NULL, tokens_completion INTEGER NOT NULL,
  reserved_tokens INTEGER NOT NULL, in_flight INTEGER NOT NULL,
  window_start_us INTEGER NOT NULL, window_requests INTEGER NOT NULL,
  window_tokens INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS reservations (
  request_id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL REFERENCES tenants(name),
  cost_max INTEGER NOT NULL, tokens_max INTEGER NOT NULL, expires_us INTEGER NOT NULL,
  model TEXT NOT NULL, price_version TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('reserved', 'released', 'settled', 'expired'))
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reservations_open ON reservations(expires_us)
  WHERE state = 'reserved';
CREATE TABLE IF NOT EXISTS settlements (
  seq INTEGER PRIMARY KEY,
  request_id TEXT NOT NULL UNIQUE REFERENCES reservations(request_id),
  tenant TEXT NOT NULL, model TEXT NOT NULL,
  prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
  cost_micros INTEGER NOT NULL, price_version TEXT NOT NULL, at_us INTEGER NOT NULL,
  clamped INTEGER NOT NULL, expired INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS settlements_by_tenant ON settlements(tenant, at_us);
CREATE TRIGGER IF NOT EXISTS settlements_no_update BEFORE UPDATE ON settlements
  BEGIN SELECT RAISE(ABORT, 'settlements are append-only'); END;
CREATE TRIGGER IF NOT EXISTS settlements_no_delete BEFORE DELETE ON settlements
  BEGIN SELECT RAISE(ABORT, 'settlements are append-only'); END;
CREATE TABLE IF NOT EXISTS totals (
  tenant TEXT NOT NULL, model TEXT NOT NULL,
  prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
  cost_micros INTEGER NOT NULL,
  PRIMARY KEY (tenant, model)
) STRICT;
CREATE TRIGGER IF NOT EXISTS settlements_totals AFTER INSERT ON settlements
  BEGIN
    INSERT INTO totals VALUES (NEW.tenant, NEW.model, NEW.prompt_tokens,
      NEW.completion_tokens, NEW.cost_micros)
    ON CONFLICT (tenant, model) DO UPDATE SET
      prompt_tokens = prompt_tokens + excluded.prompt_tokens,
      completion_tokens = completion_tokens + excluded.completion_tokens,
      cost_micros = cost_micros + excluded.cost_micros; END;
"""
_BACKFILL_TOTALS = """
INSERT INTO totals SELECT tenant, model, SUM(prompt_tokens), SUM(completion_tokens),
  SUM(cost_micros) FROM settlements GROUP BY tenant, model
"""


@dataclass
class _Tenant:
    """One `tenants` row, mutated in memory inside a write transaction, then saved."""

    name: str
    limit_micros: int | None
    limit_tokens: int | None
    period: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    period_start_us: int
    period_end_us: int | None
    spent_micros: int = 0
    reserved_micros: int = 0
    tokens_prompt: int = 0
    tokens_completion: int = 0
    reserved_tokens: int = 0
    in_flight: int = 0
    window_start_us: int = 0
    window_requests: int = 0
    window_tokens: int = 0

    def start_period(self, now_us: int) -> None:
        start, end = period_bounds(Period(self.period), now_us // 1_000_000)
        self.period_start_us = start * 1_000_000
        self.period_end_us = None if end is None else end * 1_000_000

    def roll(self, now_us: int) -> None:
        """Start a new period, resetting spent usage, when the current one has ended."""
        if self.period_end_us is not None and now_us >= self.period_end_us:
            self.start_period(now_us)
            self.spent_micros = self.tokens_prompt = self.tokens_completion = 0

    def unreserve(self, cost_max: int, tokens_max: int) -> None:
        """Drop one reservation's hold."""
        self.reserved_micros -= cost_max
        self.reserved_tokens -= tokens_max
        self.in_flight -= 1

    def used(self) -> tuple[int, int]:
        """Micro-USD and tokens spent or held in the current period."""
        tokens = self.tokens_prompt + self.tokens_completion + self.reserved_tokens
        return self.spent_micros + self.reserved_micros, tokens

    def remaining(self) -> tuple[int | None, int | None]:
        micros, tokens = self.used()
        return remaining(self.limit_micros, micros), remaining(self.limit_tokens, tokens)

    def check_budget(self, cost_max: int, tokens_max: int) -> None:
        """Refuse unless used + wanted <= limit, for each limit that is set."""
        used_micros, used_tokens = self.used()
        for reason, limit, used, want in (
            ("budget_usd", self.limit_micros, used_micros, cost_max),
            ("budget_tokens", self.limit_tokens, used_tokens, tokens_max),
        ):
            if limit is not None and used + want > limit:
                end = None if self.period_end_us is None else utc(self.period_end_us)
                raise BudgetExceeded(self.name, reason, *self.remaining(), end)

    def take_rate(self, tokens_max: int, now_us: int) -> None:
        """Count one request and its tokens in the current fixed UTC minute, or refuse."""
        window = now_us - now_us % MINUTE_US
        if window != self.window_start_us:
            self.window_start_us, self.window_requests, self.window_tokens = window, 0, 0
        retry = (window + MINUTE_US - now_us) / 1e6
        rpm, tpm = self.requests_per_minute, self.tokens_per_minute
        if rpm is not None and self.window_requests + 1 > rpm:
            raise RateLimited(self.name, "requests_per_minute", retry)
        if tpm is not None and self.window_tokens + tokens_max > tpm:
            raise RateLimited(self.name, "tokens_per_minute", retry)
        self.window_requests += 1
        self.window_tokens += tokens_max

    def usage(self) -> Usage:
        micros, tokens = self.remaining()
        return Usage(
            tenant=self.name,
            spent_micros=self.spent_micros,
            reserved_micros=self.reserved_micros,
            tokens_prompt=self.tokens_prompt,
            tokens_completion=self.tokens_completion,
            reserved_tokens=self.reserved_tokens,
            limit_micros=self.limit_micros,
            limit_tokens=self.limit_tokens,
            remaining_micros=micros,
            remaining_tokens=tokens,
            period_start=utc(self.period_start_us),
            period_end=None if self.period_end_us is None else utc(self.period_end_us),
            in_flight=self.in_flight,
        )


_COLUMNS = [f.name for f in fields(_Tenant)]
_SELECT_TENANT = f"SELECT {', '.join(_COLUMNS)} FROM tenants WHERE name = ?"
_RESERVATION_COLUMNS = (
    "request_id, tenant, cost_max, tokens_max, expires_us, model, price_version, state"
)
_SELECT_RESERVATION = (  # the reservation, then its tenant's row as _Tenant takes it
    f"SELECT {_RESERVATION_COLUMNS}, {', '.join(f't.{c}' for c in _COLUMNS)} "
    "FROM reservations JOIN tenants t ON t.name = tenant WHERE request_id = ?"
)
_TENANT_AT = _RESERVATION_COLUMNS.count(",") + 1
_INSERT_TENANT = (
    f"INSERT INTO tenants ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
_UPDATE_TENANT = f"UPDATE tenants SET {', '.join(f'{c} = ?' for c in _COLUMNS[1:])} WHERE name = ?"
_SETTLEMENT_COLUMNS = (
    "request_id, tenant, model, prompt_tokens, completion_tokens, cost_micros, "
    "price_version, at_us, clamped, expired"
)

_INSERT_SETTLEMENT = (
    f"INSERT INTO settlements ({_SETTLEMENT_COLUMNS}) VALUES ({', '.join('?' * 10)})"
)


class _FairLock:
    """A lock handed over to its waiters in arrival order. (A `threading.Lock` released by a
    thread that still holds the GIL is usually taken again by that same thread before any
    woken waiter runs: with 8 writer threads, a few waited tens of milliseconds.)"""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def __enter__(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        try:
            turn.acquire()  # released by the holder when it hands the lock to this thread
        except BaseException:  # interrupted (KeyboardInterrupt) while waiting
            with self._mutex:
                handed_over = turn not in self._waiters
                if not handed_over:
                    self._waiters.remove(turn)
            if handed_over:
                self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()  # stays held: the next waiter owns it
            else:
                self._held = False


_writer_queues: weakref.WeakValueDictionary[tuple[int, int], _FairLock] = (
    weakref.WeakValueDictionary()
)
_writer_queues_lock = threading.Lock()


def _writer_queue(lock_fd: int) -> _FairLock:
    """This process's queue of writers to the database whose write-lock file is open as
    `lock_fd`, shared by every ledger open on that file (however its path is spelled)."""
    st = os.fstat(lock_fd)
    with _writer_queues_lock:
        queue = _writer_queues.get((st.st_dev, st.st_ino))
        if queue is None:
            queue = _writer_queues[(st.st_dev, st.st_ino)] = _FairLock()
        return queue


@dataclass
class _Write:
    """One queued write: what to run inside a transaction, then its outcome."""

    run: Callable[[sqlite3.Connection], object]
    done: bool = False
    result: object = None
    error: BaseException | None = None


def _settlement(row: sqlite3.Row) -> Settlement:
    return Settlement(
        request_id=row["request_id"],
        tenant=row["tenant"],
        model=row["model"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        cost_micros=row["cost_micros"],
        price_version=row["price_version"],
        at=utc(row["at_us"]),
        clamped=bool(row["clamped"]),
        expired=bool(row["expired"]),
    )


class SQLiteLedger:
    """The ledger in one SQLite file. Thread-safe; open one per process."""

    def __init__(
        self, path: str, *, clock: Callable[[], float] = time.time, busy_timeout_s: float = 30.0
    ) -> None:
        """`clock` returns epoch seconds; tests inject one to cross period boundaries."""
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
        )
        self._conn.row_factory = sqlite3.Row
        # Writers queue on a blocking file lock instead of SQLite's polling busy handler,
        # which starves unlucky processes (seconds of p99 with 8 writers); within this process
        # they queue first in arrival order.
        self._write_lock_fd = os.open(f"{path}-writelock", os.O_RDWR | os.O_CREAT, 0o600)
        self._writers = _writer_queue(self._write_lock_fd)
        self._queued: deque[_Write] = deque()  # writes waiting for a transaction
        self._queued_lock = threading.Lock()
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._transact(self._create)

    @staticmethod
    def _create(db: sqlite3.Connection) -> None:
        had_totals = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'totals'"
        ).fetchone()
        for statement in SCHEMA.split(";\n"):
            db.execute(statement)
        if not had_totals:  # a ledger file written before totals existed
            db.execute(_BACKFILL_TOTALS)

    def _now_us(self) -> int:
        return round(self._clock() * 1_000_000)

    def _transact(self, run: Callable[[sqlite3.Connection], T]) -> T:
        """Run `run` in a write transaction and return what it returns, or raise what it
        raises. Writes that this ledger's other threads queued meanwhile commit in the same
        transaction (group commit: one fsync for several writes), in the order they were
        queued, each in its own savepoint, so one that raises leaves no trace and the others
        are written. Writes read the clock inside it, so the ledger's time never runs
        backwards across writes."""
        write = _Write(run)
        with self._queued_lock:
            self._queued.append(write)
        with self._writers:
            while not write.done:  # done already when an earlier turn's group took it
                self._commit_group()
        if write.error is not None:
            raise write.error
        return cast(T, write.result)

    def _commit_group(self) -> None:
        """One transaction of the oldest queued writes. The order of locks: this process's
        writer queue (held by the caller), this connection, the file lock."""
        with self._lock:
            fcntl.flock(self._write_lock_fd, fcntl.LOCK_EX)
            with self._queued_lock:
                group = [self._queued.popleft() for _ in range(min(MAX_GROUP, len(self._queued)))]
            db = self._conn
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    for write in group:
                        db.execute("SAVEPOINT write")
                        try:
                            write.result = write.run(db)
                        except Exception as e:
                            db.execute("ROLLBACK TO write")
                            write.error = e
                        db.execute("RELEASE write")
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:  # a failed COMMIT may have rolled back already
                        db.execute("ROLLBACK")
                    raise
            except BaseException as e:  # nothing of the group was written
                for write in group:
                    write.result, write.error = None, e
            finally:
                for write in group:
                    write.done = True
                fcntl.flock(self._write_lock_fd, fcntl.LOCK_UN)

    @staticmethod
    def _load(db: sqlite3.Connection, tenant: str) -> _Tenant:
        row = db.execute(_SELECT_TENANT, (tenant,)).fetchone()
        if row is None:
            raise UnknownTenant(tenant)
        return _Tenant(*row)

    @staticmethod
    def _save(db: sqlite3.Connection, t: _Tenant) -> None:
        values = [getattr(t, c) for c in _COLUMNS]
        db.execute(_UPDATE_TENANT, [*values[1:], t.name])

    def configure_tenant(self, tenant: str, limits: TenantLimits) -> None:
        validate.name("tenant", tenant)
        validate.limits(limits)

        def write(db: sqlite3.Connection) -> None:
            now = self._now_us()
            try:
                t = self._load(db, tenant)
            except UnknownTenant:
                t = _Tenant(tenant, None, None, limits.period.value, None, None, 0, None)
                t.start_period(now)
                db.execute(_INSERT_TENANT, [getattr(t, c) for c in _COLUMNS])
            t.roll(now)
            if t.period != limits.period.value:
                t.period = limits.period.value
                t.start_period(now)
            t.limit_micros, t.limit_tokens = limits.limit_micros, limits.limit_tokens
            t.requests_per_minute = limits.requests_per_minute
            t.tokens_per_minute = limits.tokens_per_minute
            self._save(db, t)

        self._transact(write)

    def reserve(
        self,
        tenant: str,
        request_id: str,
        cost_max: int,
        tokens_max: int,
        *,
        lease_s: float = 300.0,
        model: str = "",
        price_version: str = "",
    ) -> Reservation:
        lease_us = validate.reservation(
            tenant, request_id, cost_max, tokens_max, lease_s, model, price_version
        )

        def write(db: sqlite3.Connection) -> Reservation:
            now = self._now_us()
            t = self._load(db, tenant)
            try:  # a refusal below rolls this back
                db.execute(
                    "INSERT INTO reservations VALUES (?, ?, ?, ?, ?, ?, ?, 'reserved')",
                    (request_id, tenant, cost_max, tokens_max, now + lease_us, model,
                     price_version),
                )
            except sqlite3.IntegrityError:  # the tenant exists, so only the request id clashes
                raise DuplicateRequest(request_id) from None
            t.roll(now)
            t.check_budget(cost_max, tokens_max)
            t.take_rate(tokens_max, now)
            t.reserved_micros += cost_max
            t.reserved_tokens += tokens_max
            t.in_flight += 1
            self._save(db, t)
            return Reservation(tenant, request_id, cost_max, tokens_max, (now + lease_us) / 1e6)

        return self._transact(write)

    def _charge(
        self,
        db: sqlite3.Connection,
        res: sqlite3.Row,
        charge: tuple[int, int, int, bool],
        now: int,
        expired: bool,
    ) -> Settlement:
        """Move a reservation into spent usage and append its settlement record."""
        cost, prompt, completion, clamped = charge
        t = _Tenant(*res[_TENANT_AT:])
        t.roll(now)
        t.unreserve(res["cost_max"], res["tokens_max"])
        t.spent_micros += cost
        t.tokens_prompt += prompt
        t.tokens_completion += completion
        self._save(db, t)
        state = "expired" if expired else "settled"
        db.execute(
            "UPDATE reservations SET state = ? WHERE request_id = ?", (state, res["request_id"])
        )
        record = Settlement(
            res["request_id"],
            t.name,
            res["model"],
            prompt,
            completion,
            cost,
            res["price_version"],
            utc(now),
            clamped,
            expired,
        )
        db.execute(
            _INSERT_SETTLEMENT,
            (
                record.request_id,
                record.tenant,
                record.model,
                prompt,
                completion,
                cost,
                record.price_version,
                now,
                int(clamped),
                int(expired),
            ),
        )
        if clamped:
            log.warning("settlement of %s clamped to its reservation", record.request_id)
        return record

    def _charge_in_full(self, db: sqlite3.Connection, res: sqlite3.Row, now: int) -> Settlement:
        full = (res["cost_max"], 0, res["tokens_max"], False)
        return self._charge(db, res, full, now, expired=True)

    @staticmethod
    def _reservation(db: sqlite3.Connection, request_id: str) -> sqlite3.Row:
        """The reservation joined with its tenant's row (as it is now: load it again after a
        write to the tenant)."""
        row = db.execute(_SELECT_RESERVATION, (request_id,)).fetchone()
        if row is None:
            raise UnknownReservation(request_id)
        return row  # type: ignore[no-any-return]

    def settle(
        self, request_id: str, cost_micros: int, prompt_tokens: int, completion_tokens: int
    ) -> Settlement:
        validate.settlement(request_id, cost_micros, prompt_tokens, completion_tokens)

        def write(db: sqlite3.Connection) -> Settlement:
            now = self._now_us()
            res = self._reservation(db, request_id)
            if res["state"] == "released":
                raise UnknownReservation(request_id, "was released, so there is nothing to settle")
            if res["state"] != "reserved":
                row = db.execute(
                    f"SELECT {_SETTLEMENT_COLUMNS} FROM settlements WHERE request_id = ?",
                    (request_id,),
                ).fetchone()
                return _settlement(row)
            if now >= res["expires_us"]:
                return self._charge_in_full(db, res, now)
            charge = clamp(
                cost_micros, prompt_tokens, completion_tokens, res["cost_max"], res["tokens_max"]
            )
            return self._charge(db, res, charge, now, expired=False)

        return self._transact(write)

    def release(self, request_id: str) -> None:
        validate.name("request_id", request_id)

        def write(db: sqlite3.Connection) -> None:
            now = self._now_us()
            res = self._reservation(db, request_id)
            if res["state"] != "reserved":
                return
            if now >= res["expires_us"]:
                self._charge_in_full(db, res, now)
                return
            t = _Tenant(*res[_TENANT_AT:])
            t.unreserve(res["cost_max"], res["tokens_max"])
            self._save(db, t)
            db.execute(
                "UPDATE reservations SET state = 'released' WHERE request_id = ?", (request_id,)
            )

        self._transact(write)

    def expire(self) -> int:
        def write(db: sqlite3.Connection) -> int:
            now = self._now_us()
            due = db.execute(
                "SELECT request_id FROM reservations WHERE state = 'reserved' AND expires_us <= ?",
                (now,),
            ).fetchall()
            for (request_id,) in due:  # one at a time: each charge changes its tenant's row
                self._charge_in_full(db, self._reservation(db, request_id), now)
            return len(due)

        return self._transact(write)

    def usage(self, tenant: str) -> Usage:
        validate.name("tenant", tenant)
        now = self._now_us()
        with self._lock:
            t = self._load(self._conn, tenant)
        t.roll(now)
        return t.usage()

    def totals(self) -> list[Totals]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM totals ORDER BY tenant, model").fetchall()
        return [Totals(*r) for r in rows]

    def tenants(self) -> list[str]:
        with self._lock:
            rows = self._conn.execute("SELECT name FROM tenants ORDER BY name").fetchall()
        return [r["name"] for r in rows]

    def settlements(
        self, tenant: str | None = None, since: datetime | None = None
    ) -> list[Settlement]:
        if tenant is not None:
            validate.name("tenant", tenant)
        since_us = 0 if since is None else round(since.timestamp() * 1_000_000)
        query = f"SELECT {_SETTLEMENT_COLUMNS} FROM settlements WHERE at_us >= ?"
        params: list[object] = [since_us]
        if tenant is not None:
            query += " AND tenant = ?"
            params.append(tenant)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY seq", params).fetchall()
        return [_settlement(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            os.close(self._write_lock_fd)
