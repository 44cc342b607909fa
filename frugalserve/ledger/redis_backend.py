"""Redis ledger backend for clusters: every gateway replica shares one Redis (7 or later)
primary; each operation is one Lua function (see `lua.py`), timed by the server's clock.
Settings: README.md."""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from typing import Protocol, cast

import redis
from redis.connection import Connection
from redis.exceptions import ResponseError
from redis.retry import Retry

from . import lua, validate
from .periods import utc
from .protocol import remaining
from .types import (
    BudgetExceeded,
    DuplicateRequest,
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

EXPIRE_BATCH = 500


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)


def _pairs(words: list[str]) -> dict[str, str]:
    """A function's reply of alternating field names and values."""
    return dict(zip(words[::2], words[1::2], strict=True))


def _settlement(f: dict[str, str]) -> Settlement:
    return Settlement(
        request_id=f["request_id"],
        tenant=f["tenant"],
        model=f["model"],
        prompt_tokens=int(f["prompt_tokens"]),
        completion_tokens=int(f["completion_tokens"]),
        cost_micros=int(f["cost_micros"]),
        price_version=f["price_version"],
        at=utc(int(f["at_us"])),
        clamped=f["clamped"] == "1",
        expired=f["expired"] == "1",
    )


def _totals(flat: dict[str, str]) -> list[Totals]:
    """The `totals` hash ('TENANT MODEL kind' -> sum) as sorted Totals."""
    sums: dict[tuple[str, str], dict[str, int]] = {}
    for field, value in flat.items():
        tenant, model, kind = field.split(" ")
        sums.setdefault((tenant, model), {})[kind] = int(value)
    return [
        Totals(tenant, model, s["prompt"], s["completion"], s["cost"])
        for (tenant, model), s in sorted(sums.items())
    ]


def _usage(tenant: str, h: dict[str, str]) -> Usage:
    def limit(field: str) -> int | None:
        return None if h[field] == "" else int(h[field])

    spent, reserved = int(h["spent_micros"]), int(h["reserved_micros"])
    tokens = int(h["tokens_prompt"]) + int(h["tokens_completion"]) + int(h["reserved_tokens"])
    limit_micros, limit_tokens = limit("limit_micros"), limit("limit_tokens")
    end = h["period_end_us"]
    return Usage(
        tenant=tenant,
        spent_micros=spent,
        reserved_micros=reserved,
        tokens_prompt=int(h["tokens_prompt"]),
        tokens_completion=int(h["tokens_completion"]),
        reserved_tokens=int(h["reserved_tokens"]),
        limit_micros=limit_micros,
        limit_tokens=limit_tokens,
        remaining_micros=remaining(limit_micros, spent + reserved),
        remaining_tokens=remaining(limit_tokens, tokens),
        period_start=utc(int(h["period_start_us"])),
        period_end=None if end == "" else utc(int(end)),
        in_flight=int(h["in_flight"]),
    )


class _Connection(Protocol):
    """What the ledger uses of a redis-py connection (which redis-py leaves untyped)."""

    retry: Retry

    def send_packed_command(self, command: list[bytes]) -> None: ...
    def read_response(self) -> object: ...
    def disconnect(self) -> None: ...


def _command(*args: str) -> bytes:
    """One command in the Redis protocol (RESP): what redis-py's `pack_command` makes of
    string arguments, in a quarter of its time."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _library() -> tuple[str, str]:
    """The ledger's Functions library: its name, which names this version of the code (so
    gateways of two versions can share a server), and its text."""
    digest = hashlib.sha1(lua.library("frugalserve_ledger").encode()).hexdigest()[:16]
    name = f"frugalserve_ledger_{digest}"
    return name, lua.library(name)


LIBRARY, LIBRARY_TEXT = _library()


class RedisLedger:
    """The ledger in one Redis database, under key `prefix`. Thread-safe."""

    def __init__(
        self, client: redis.Redis, *, prefix: str = "fs:", time_offset_s: float = 0.0
    ) -> None:
        """`time_offset_s` is added to the server clock: for tests and drills only."""
        self._r = client
        self._prefix = prefix
        self.time_offset_s = time_offset_s
        # Connections this ledger took from the client's pool and keeps between calls: a
        # list's pop and append are atomic, so each thread gets one to itself, without the
        # pool's per-call health check.
        self._idle: list[_Connection] = []

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "fs:", time_offset_s: float = 0.0) -> RedisLedger:
        return cls(redis.Redis.from_url(url), prefix=prefix, time_offset_s=time_offset_s)

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def _run(self, name: str, keys: list[str], args: list[str]) -> list[str]:
        """Call an operation's function with the clock offset as ARGV[1]; its reply split
        into words. Sent as FCALL (loading the library first when the server lacks it),
        retried as the client's `retry` says, like any redis-py command."""
        fcall = _command(
            "FCALL",
            f"{LIBRARY}_{name}",
            str(len(keys)),
            *keys,
            str(round(self.time_offset_s * 1_000_000)),
            *args,
        )

        def call() -> object:
            conn.send_packed_command([fcall])
            try:
                return conn.read_response()
            except ResponseError as e:
                if "Function not found" not in str(e):
                    raise
                conn.send_packed_command([_command("FUNCTION", "LOAD", "REPLACE", LIBRARY_TEXT)])
                conn.read_response()
                conn.send_packed_command([fcall])
                return conn.read_response()

        try:
            conn = self._idle.pop()
        except IndexError:
            conn = cast(_Connection, self._r.connection_pool.get_connection())
        try:
            reply = conn.retry.call_with_retry(call, lambda _: conn.disconnect())
        except BaseException:
            conn.disconnect()  # a reply may be left unread; the next call reconnects
            raise
        finally:
            self._idle.append(conn)
        return _s(cast(bytes, reply)).split(" ")

    def configure_tenant(self, tenant: str, limits: TenantLimits) -> None:
        validate.name("tenant", tenant)
        validate.limits(limits)
        self._run(
            "configure",
            [self._key("tenant", tenant), self._key("tenants")],
            [
                tenant,
                _opt(limits.limit_micros),
                _opt(limits.limit_tokens),
                limits.period.value,
                _opt(limits.requests_per_minute),
                _opt(limits.tokens_per_minute),
            ],
        )

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
        out = self._run(
            "reserve",
            [self._key("tenant", tenant), self._key("req", request_id), self._key("leases")],
            [
                request_id,
                str(cost_max),
                str(tokens_max),
                str(lease_us),
                model,
                price_version,
                tenant,
            ],
        )
        if out[0] == "unknown_tenant":
            raise UnknownTenant(tenant)
        if out[0] == "duplicate":
            raise DuplicateRequest(request_id)
        if out[0] == "budget":
            micros, tokens, end = (None if v == "" else int(v) for v in out[2:5])
            raise BudgetExceeded(tenant, out[1], micros, tokens, None if end is None else utc(end))
        if out[0] == "rate":
            raise RateLimited(tenant, out[1], int(out[2]) / 1e6)
        return Reservation(tenant, request_id, cost_max, tokens_max, int(out[1]) / 1e6)

    def settle(
        self, request_id: str, cost_micros: int, prompt_tokens: int, completion_tokens: int
    ) -> Settlement:
        validate.settlement(request_id, cost_micros, prompt_tokens, completion_tokens)
        out = self._run(
            "settle",
            [self._key("req", request_id)],
            [
                request_id,
                str(cost_micros),
                str(prompt_tokens),
                str(completion_tokens),
                self._prefix,
            ],
        )
        if out[0] == "unknown":
            raise UnknownReservation(request_id)
        if out[0] == "released":
            raise UnknownReservation(request_id, "was released, so there is nothing to settle")
        record = _settlement(_pairs(out[1:]))
        if record.clamped and out[0] == "ok":
            log.warning("settlement of %s clamped to its reservation", request_id)
        return record

    def release(self, request_id: str) -> None:
        validate.name("request_id", request_id)
        out = self._run("release", [self._key("req", request_id)], [request_id, self._prefix])
        if out[0] == "unknown":
            raise UnknownReservation(request_id)

    def expire(self) -> int:
        total = 0
        while True:
            out = self._run("expire", [self._key("leases")], [self._prefix, str(EXPIRE_BATCH)])
            n = int(out[0])
            total += n
            if n < EXPIRE_BATCH:
                return total

    def usage(self, tenant: str) -> Usage:
        validate.name("tenant", tenant)
        flat = self._run("usage", [self._key("tenant", tenant)], [])
        if flat == ["unknown"]:
            raise UnknownTenant(tenant)
        return _usage(tenant, _pairs(flat))

    def totals(self) -> list[Totals]:
        flat = cast(dict[bytes, bytes], self._r.hgetall(self._key("totals")))
        return _totals({_s(k): _s(v) for k, v in flat.items()})

    def tenants(self) -> list[str]:
        members = cast(set[bytes], self._r.smembers(self._key("tenants")))
        return sorted(_s(v) for v in members)

    def settlements(
        self, tenant: str | None = None, since: datetime | None = None
    ) -> list[Settlement]:
        if tenant is not None:
            validate.name("tenant", tenant)
        since_us = 0 if since is None else round(since.timestamp() * 1_000_000)
        # Stream ids carry the server's real clock: at most our offset (plus slack) behind `at`.
        start_ms = max(0, (since_us - round(self.time_offset_s * 1e6)) // 1000 - 1000)
        since_at = utc(since_us)
        out: list[Settlement] = []
        cursor = f"{start_ms}-0"
        while True:
            batch = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                self._r.xrange(self._key("settlements"), min=cursor, count=1000),
            )
            for _, fields in batch:
                record = _settlement({_s(k): _s(v) for k, v in fields.items()})
                if record.at >= since_at and tenant in (None, record.tenant):
                    out.append(record)
            if len(batch) < 1000:
                return out
            cursor = "(" + _s(batch[-1][0])

    def close(self) -> None:
        while self._idle:
            self._r.connection_pool.release(cast(Connection, self._idle.pop()))
        self._r.close()
