"""`HandleClient.complete` over a fake deployment handle: the whole completion is one call, and a
caller that leaves cancels that call, so the deployment closes the generation and frees its slot."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from frugalserve.serving.clients import Completion, HandleClient
from frugalserve.serving.engine import SamplingParams

pytestmark = pytest.mark.unit


class Response:
    """A `DeploymentResponse` stand-in: awaitable, cancellable."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s, self.cancelled = delay_s, False

    def __await__(self) -> Any:
        return self._result().__await__()

    async def _result(self) -> Completion:
        await asyncio.sleep(self.delay_s)
        return Completion("xy", "length", 3, 2, 0.001)

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.calls: list[Response] = []
        self.complete = self

    def remote(self, *_: object) -> Response:
        self.calls.append(Response(self.delay_s))
        return self.calls[-1]

    def options(self, **_: object) -> FakeHandle:
        return self


async def test_whole_completion_is_one_call() -> None:
    handle = FakeHandle(0.0)
    done = await HandleClient(handle).complete([1, 2, 3], SamplingParams(max_tokens=2), "r1")
    assert done == Completion("xy", "length", 3, 2, 0.001)
    assert len(handle.calls) == 1 and not handle.calls[0].cancelled


async def test_a_caller_leaving_cancels_the_deployment_call() -> None:
    handle = FakeHandle(10.0)
    call = asyncio.ensure_future(
        HandleClient(handle).complete([1, 2, 3], SamplingParams(max_tokens=2), "r2"))
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert handle.calls[0].cancelled
