"""The one mapping from exceptions to HTTP statuses in OpenAI's error shape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from frugalserve.ledger import BudgetExceeded, InvalidLedgerInput, RateLimited, UnknownTenant
from frugalserve.serving import errors
from frugalserve.serving.protocol import ChatRequest

pytestmark = pytest.mark.unit


def _validation_error() -> ValidationError:
    try:
        ChatRequest.model_validate({"model": "m", "messages": [], "top_p": 3})
    except ValidationError as exc:
        return exc
    raise AssertionError("expected a validation error")


@pytest.mark.parametrize(("exc", "status", "type_", "code"), [
    (errors.InvalidRequest("x", param="p"), 400, "invalid_request_error", "invalid_value"),
    (errors.AuthenticationFailed("x"), 401, "invalid_request_error", "invalid_api_key"),
    (errors.PermissionDenied("x"), 403, "invalid_request_error", "model_not_allowed"),
    (errors.NotFound("x"), 404, "invalid_request_error", "model_not_found"),
    (errors.BodyTooLarge("x"), 413, "invalid_request_error", "request_too_large"),
    (BudgetExceeded("t", "budget", 0, None, datetime.now(UTC) + timedelta(hours=1)), 429,
     "insufficient_quota", "insufficient_quota"),
    (RateLimited("t", "requests_per_minute", 1.2), 429, "rate_limit_exceeded",
     "rate_limit_exceeded"),
    (_validation_error(), 400, "invalid_request_error", "invalid_value"),
    (InvalidLedgerInput("cost_max", "too big"), 400, "invalid_request_error", "invalid_value"),
    (UnknownTenant("t"), 503, "server_error", "unavailable"),
    (RuntimeError("secret detail"), 500, "server_error", "internal_error"),
])
def test_mapping(exc: Exception, status: int, type_: str, code: str) -> None:
    err = errors.to_api_error(exc)
    body = err.body()["error"]
    assert (err.status, body["type"], body["code"]) == (status, type_, code)
    assert set(body) == {"message", "type", "param", "code"}
    assert "secret detail" not in body["message"]


def test_retry_after_is_the_period_reset() -> None:
    err = errors.to_api_error(
        BudgetExceeded("t", "budget", 0, None, datetime.now(UTC) + timedelta(seconds=90)))
    assert 85 <= int(err.headers["Retry-After"]) <= 90
    assert errors.to_api_error(RateLimited("t", "rpm", 1.2)).headers == {"Retry-After": "2"}


def test_validation_error_names_the_parameter() -> None:
    err = errors.to_api_error(_validation_error())
    assert err.param in {"messages", "top_p"}
    assert err.message.startswith(f"{err.param}:")
