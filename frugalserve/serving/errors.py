"""Every error a client can see, mapped to one HTTP status in OpenAI's error JSON shape.

The gateway raises `APIError`s; `to_api_error` turns anything else that escapes (ledger refusals,
validation errors, engine failures) into one, so this module is the only place statuses are chosen.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from frugalserve.ledger import BudgetExceeded, InvalidLedgerInput, RateLimited, UnknownTenant


class APIError(Exception):
    """An error with its HTTP status, OpenAI `type`/`code`, the offending `param` and headers."""

    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(APIError):
    status, type, code = 400, "invalid_request_error", "invalid_value"


class AuthenticationFailed(APIError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class PermissionDenied(APIError):
    status, type, code = 403, "invalid_request_error", "model_not_allowed"


class NotFound(APIError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class BodyTooLarge(APIError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class QuotaExceeded(APIError):
    status, type, code = 429, "insufficient_quota", "insufficient_quota"


class RateLimitExceeded(APIError):
    status, type, code = 429, "rate_limit_exceeded", "rate_limit_exceeded"


class Unavailable(APIError):
    status, type, code = 503, "server_error", "unavailable"


def _retry_after(resets_at: datetime | None) -> dict[str, str]:
    if resets_at is None:
        return {}
    seconds = math.ceil((resets_at - datetime.now(UTC)).total_seconds())
    return {"Retry-After": str(max(seconds, 1))}


def _param(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as OpenAI names parameters: `messages[0].content`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def to_api_error(exc: BaseException) -> APIError:
    """The client-visible form of any exception; unknown ones become an opaque 500."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, BudgetExceeded):
        return QuotaExceeded(
            f"You exceeded your budget ({exc.reason}); it resets at "
            f"{exc.resets_at.isoformat() if exc.resets_at else 'never'}.",
            headers=_retry_after(exc.resets_at),
        )
    if isinstance(exc, RateLimited):
        return RateLimitExceeded(
            f"Rate limit reached ({exc.reason}).",
            headers={"Retry-After": str(max(math.ceil(exc.retry_after_s), 1))},
        )
    if isinstance(exc, ValidationError):
        err = exc.errors(include_url=False)[0]
        param = _param(tuple(err["loc"])) or None
        return InvalidRequest(f"{param}: {err['msg']}" if param else err["msg"], param=param)
    if isinstance(exc, InvalidLedgerInput):
        return InvalidRequest(str(exc), param=exc.parameter)
    if isinstance(exc, UnknownTenant):
        return Unavailable("The tenant is not configured yet; retry shortly.")
    return APIError("The server had an error while processing your request.")
