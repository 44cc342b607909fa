"""The OpenAI-compatible HTTP surface of a `Gateway`: /v1/chat/completions, /v1/completions,
/v1/models, /metrics, /healthz and /readyz. Built by `create_app`, served by Ray Serve's ingress
in `app.Gateway` and directly (ASGI, no Ray) in the fast tests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import Receive, Scope, Send

from frugalserve.pricing.cost import MICROS_PER_USD
from frugalserve.serving import protocol
from frugalserve.serving.engine import SamplingParams
from frugalserve.serving.errors import BodyTooLarge, InvalidRequest, to_api_error
from frugalserve.serving.gateway import Admission, Gateway
from frugalserve.serving.protocol import ChatRequest, CompletionRequest


def error_response(exc: BaseException) -> JSONResponse:
    err = to_api_error(exc)
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class SettlingStream(StreamingResponse):
    """A streamed response that calls `on_close` however it ends: finished, cut off by the
    client, or never started because the client left before the first byte."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]],
                 **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.on_close()


def create_app(gateway: Gateway, max_body_bytes: int = 1 << 20) -> FastAPI:
    """A FastAPI app serving `gateway`; bodies over `max_body_bytes` get 413."""
    app = FastAPI(title="frugalserve", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        try:
            gateway.ready()
        except Exception as exc:
            return error_response(exc)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        body = await asyncio.to_thread(gateway.metrics.render)  # reads the ledger's totals
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            tenant = gateway.authenticate(request.headers.get("authorization"))
        except Exception as exc:
            return error_response(exc)
        return JSONResponse(protocol.model_list(gateway.visible_models(tenant), created))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _complete(gateway, request, ChatRequest, max_body_bytes)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _complete(gateway, request, CompletionRequest, max_body_bytes)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"The request body is {declared} bytes; the limit is {limit}.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"The request body exceeds the limit of {limit} bytes.")
    return bytes(body)


async def _complete(gateway: Gateway, request: Request,
                    kind: type[ChatRequest] | type[CompletionRequest], limit: int) -> Response:
    try:
        body = await _read_body(request, limit)
        tenant = gateway.authenticate(request.headers.get("authorization"))
        try:
            payload = json.loads(body)
        except ValueError:
            raise InvalidRequest("The body is not valid JSON.") from None
        if not isinstance(payload, dict):
            raise InvalidRequest("The body must be a JSON object.")
        req = kind.model_validate(payload)
        adm = await gateway.admit(tenant, req)
    except Exception as exc:
        return error_response(exc)
    params = SamplingParams(max_tokens=adm.max_tokens, temperature=req.temperature,
                            top_p=req.top_p, top_k=req.top_k, seed=req.seed, stop=req.stops())
    headers = _headers(adm)
    if req.stream:
        deltas = gateway.run(adm, params)
        return SettlingStream(_sse(adm, req, deltas), lambda: gateway.finish(adm, deltas),
                              media_type="text/event-stream", headers=headers)
    try:
        done = await gateway.complete(adm, params)
    except Exception as exc:
        return error_response(exc)
    build = protocol.chat_response if isinstance(req, ChatRequest) else protocol.text_response
    body_out = build(adm.request_id, adm.model, done.text, done.finish_reason or "stop",
                     done.prompt_tokens, done.completion_tokens)
    return JSONResponse(body_out, headers=headers)


def _headers(adm: Admission) -> dict[str, str]:
    out = {"x-frugalserve-request-id": adm.request_id}  # Serve sets its own x-request-id
    if (micros := adm.usage.remaining_micros) is not None:
        out["x-frugalserve-budget-remaining-usd"] = f"{micros / MICROS_PER_USD:.6f}"
    if adm.usage.remaining_tokens is not None:
        out["x-frugalserve-tokens-remaining"] = str(adm.usage.remaining_tokens)
    if adm.downgraded_from:
        out["x-frugalserve-downgraded"] = adm.downgraded_from
    return out


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _sse(adm: Admission, req: ChatRequest | CompletionRequest,
               deltas: AsyncIterator[Any]) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk shapes, a usage chunk when asked, then [DONE]."""
    created, rid, model = int(time.time()), adm.request_id, adm.model
    chat = isinstance(req, ChatRequest)
    usage_field = {"usage": None} if req.include_usage() else {}
    prompt, completion = len(adm.prompt_ids), 0
    if chat:
        yield _event({**protocol.chat_chunk(rid, model, created, {"role": "assistant",
                                                                  "content": ""}, None),
                      **usage_field})
    try:
        async for delta in deltas:
            prompt, completion = delta.prompt_tokens, delta.completion_tokens
            if chat:
                content = {"content": delta.text} if delta.text else {}
                chunk = protocol.chat_chunk(rid, model, created, content, delta.finish_reason)
            else:
                chunk = protocol.text_chunk(rid, model, created, delta.text, delta.finish_reason)
            yield _event({**chunk, **usage_field})
    except Exception as exc:
        yield _event(to_api_error(exc).body())
        return
    if req.include_usage():
        kind = "chat.completion.chunk" if chat else "text_completion"
        yield _event({"id": rid, "object": kind, "created": created, "model": model,
                      "choices": [], "usage": protocol.usage(prompt, completion)})
    yield "data: [DONE]\n\n"
