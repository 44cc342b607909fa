"""Input checks shared by both backends, run before anything is written so a refused call
leaves no trace. Called by the SQLite and Redis ledgers."""

from __future__ import annotations

import math
import re

from .types import InvalidLedgerInput, Period, TenantLimits

MAX_LIMIT = 10**15
"""Largest budget (micro-USD = 1e9 USD, or tokens) accepted; keeps Lua's doubles exact."""
MAX_REQUEST_MICROS = 10**12
"""Largest cost of one request: one million USD."""
MAX_REQUEST_TOKENS = 10**9
"""Largest token count of one request."""
MAX_PER_MINUTE = 10**12
MAX_LEASE_S = 7 * 86400.0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+=-]*", re.ASCII)
_LABEL = re.compile(r"[\x21-\x7e]*", re.ASCII)


def name(parameter: str, value: object, max_len: int = 253) -> str:
    """A tenant or request id: ASCII letters, digits and `._:/@+=-`, 1..max_len characters."""
    if not isinstance(value, str):
        raise InvalidLedgerInput(parameter, f"must be a string, got {type(value).__name__}")
    if not 0 < len(value) <= max_len:
        raise InvalidLedgerInput(parameter, f"length must be 1..{max_len}, got {len(value)}")
    if not _NAME.fullmatch(value):
        raise InvalidLedgerInput(
            parameter, f"{value[:40]!r}: only ASCII letters, digits and ._:/@+=- are allowed"
        )
    return value


def label(parameter: str, value: object, max_len: int = 200) -> str:
    """A model name or price version: printable ASCII without spaces, may be empty."""
    if not isinstance(value, str) or len(value) > max_len or not _LABEL.fullmatch(value):
        raise InvalidLedgerInput(
            parameter, f"must be printable ASCII without spaces, at most {max_len} characters"
        )
    return value


def amount(parameter: str, value: object, maximum: int) -> int:
    """A non-negative integer no larger than `maximum` (bools and floats are refused)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidLedgerInput(parameter, f"must be an int, got {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise InvalidLedgerInput(parameter, f"must be in 0..{maximum}, got {value}")
    return value


def optional_amount(parameter: str, value: object, maximum: int) -> int | None:
    return None if value is None else amount(parameter, value, maximum)


def lease(value: object) -> float:
    """Lease length in seconds: a finite number in (0, 7 days]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidLedgerInput("lease_s", f"must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and 0 < value <= MAX_LEASE_S):
        raise InvalidLedgerInput("lease_s", f"must be in (0, {MAX_LEASE_S:.0f}], got {value}")
    return float(value)


def limits(value: object) -> TenantLimits:
    """Every field of a TenantLimits."""
    if not isinstance(value, TenantLimits):
        raise InvalidLedgerInput("limits", f"must be TenantLimits, got {type(value).__name__}")
    if not isinstance(value.period, Period):
        raise InvalidLedgerInput("limits.period", f"must be a Period, got {value.period!r}")
    optional_amount("limits.limit_micros", value.limit_micros, MAX_LIMIT)
    optional_amount("limits.limit_tokens", value.limit_tokens, MAX_LIMIT)
    optional_amount("limits.requests_per_minute", value.requests_per_minute, MAX_PER_MINUTE)
    optional_amount("limits.tokens_per_minute", value.tokens_per_minute, MAX_PER_MINUTE)
    return value


def reservation(
    tenant: object, request_id: object, cost_max: object, tokens_max: object, lease_s: object,
    model: object, price_version: object,
) -> int:
    """Every argument of `reserve`; returns the lease in microseconds."""
    name("tenant", tenant)
    name("request_id", request_id)
    amount("cost_max", cost_max, MAX_REQUEST_MICROS)
    amount("tokens_max", tokens_max, MAX_REQUEST_TOKENS)
    label("model", model)
    label("price_version", price_version)
    return round(lease(lease_s) * 1_000_000)


def settlement(
    request_id: object, cost_micros: object, prompt_tokens: object, completion_tokens: object
) -> None:
    """Every argument of `settle`."""
    name("request_id", request_id)
    amount("cost_micros", cost_micros, MAX_REQUEST_MICROS)
    amount("prompt_tokens", prompt_tokens, MAX_REQUEST_TOKENS)
    amount("completion_tokens", completion_tokens, MAX_REQUEST_TOKENS)
