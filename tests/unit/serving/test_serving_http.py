"""The OpenAI surface of the gateway with the official client: completions, streaming with a
usage chunk equal to the engine's counts, every error status in OpenAI's shape, downgrade."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from frugalserve.serving.engine import SamplingParams
from frugalserve.serving.gateway import Gateway
from frugalserve.serving.http import create_app
from frugalserve.serving.protocol import CompletionRequest
from tests.unit.serving.conftest import KEYS, Stack, user_config

pytestmark = pytest.mark.unit
CHAT = [{"role": "user", "content": "hello"}]


async def test_chat_usage_equals_engine_counts(stack: Stack) -> None:
    client = stack.openai("alice")
    out = await client.chat.completions.create(model="big", messages=CHAT, max_tokens=5)
    assert out.model == "big"
    assert out.choices[0].message.content == "xxxxx"
    assert out.choices[0].finish_reason == "length"
    prompt, completion = stack.engines["big"].produced[out.id]
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (prompt, completion)
    assert prompt == len(stack.engines["big"].apply_chat_template(CHAT).encode())
    usage = await asyncio.to_thread(stack.ledger.usage, "alice")
    assert usage.tokens_prompt == prompt and usage.tokens_completion == 5
    assert usage.spent_micros == prompt * 1 + 5 * 10
    assert usage.in_flight == 0


async def test_text_completion(stack: Stack) -> None:
    out = await stack.openai("alice").completions.create(model="small", prompt="abc",
                                                         max_tokens=3)
    assert out.choices[0].text == "xxx"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (3, 3)


async def test_streaming_has_final_usage_chunk(stack: Stack) -> None:
    stream = await stack.openai("alice").chat.completions.create(
        model="big", messages=CHAT, max_tokens=4, stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "xxxx"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    prompt, completion = stack.engines["big"].produced[chunks[0].id]
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        prompt, completion)


async def test_models_lists_only_allowed(stack: Stack) -> None:
    assert [m.id async for m in stack.openai("alice").models.list()] == ["big", "small"]
    assert [m.id async for m in stack.openai("bob").models.list()] == ["small"]


async def test_auth_errors(stack: Stack) -> None:
    bad = openai.AsyncOpenAI(base_url="http://test/v1", api_key="sk-wrong",
                             http_client=stack.http, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        await bad.chat.completions.create(model="big", messages=CHAT, max_tokens=1)
    assert exc.value.body["code"] == "invalid_api_key"
    r = await stack.http.get("/v1/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"


async def test_model_not_allowed_is_403_unknown_is_404(stack: Stack) -> None:
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await stack.openai("bob").chat.completions.create(model="big", messages=CHAT,
                                                         max_tokens=1)
    assert exc.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        await stack.openai("alice").chat.completions.create(model="nope", messages=CHAT,
                                                           max_tokens=1)


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "big", "messages": CHAT, "temperature": 7}, "temperature"),
    ({"model": "big", "messages": []}, "messages"),
    ({"model": "big", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "big", "messages": CHAT, "max_tokens": 0}, "max_tokens"),
    ({"model": "big", "messages": CHAT, "max_tokens": 190}, "max_tokens"),
    ({"model": "big", "messages": CHAT, "n": 2}, "n"),
    ({"messages": CHAT}, "model"),
])
async def test_bad_parameters_are_400_naming_them(stack: Stack, body: dict, param: str) -> None:
    r = await stack.http.post("/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {KEYS['alice']}"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert (await asyncio.to_thread(stack.ledger.usage, "alice")).in_flight == 0


async def test_malformed_json_is_400(stack: Stack) -> None:
    r = await stack.http.post("/v1/completions", content=b"{not json",
                              headers={"Authorization": f"Bearer {KEYS['alice']}"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


async def test_prompt_beyond_context_is_400(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await stack.openai("alice").completions.create(model="big", prompt="y" * 300,
                                                       max_tokens=1)
    assert exc.value.body["param"] == "prompt"
    assert exc.value.body["code"] == "context_length_exceeded"


async def test_body_over_limit_is_413(stack: Stack) -> None:
    with pytest.raises(openai.APIStatusError) as exc:
        await stack.openai("alice").completions.create(model="big", prompt="y" * 5000)
    assert exc.value.status_code == 413
    assert exc.value.body["code"] == "request_too_large"


async def test_over_budget_is_429_insufficient_quota_with_retry_after(stack: Stack) -> None:
    client = stack.openai("alice")
    with pytest.raises(openai.RateLimitError) as exc:
        await asyncio.gather(*[client.completions.create(model="big", prompt="p", max_tokens=190)
                               for _ in range(60)])
    assert exc.value.body["code"] == "insufficient_quota"
    assert int(exc.value.response.headers["retry-after"]) >= 1
    usage = await asyncio.to_thread(stack.ledger.usage, "alice")
    assert usage.spent_micros + usage.reserved_micros <= 100_000


async def test_missing_max_tokens_fits_the_remaining_budget(stack: Stack) -> None:
    r = await stack.http.post("/v1/chat/completions", json={"model": "big", "messages": CHAT},
                              headers={"Authorization": f"Bearer {KEYS['alice']}"})
    assert r.status_code == 200
    body = r.json()
    prompt = body["usage"]["prompt_tokens"]
    assert body["usage"]["completion_tokens"] == 200 - prompt  # the context is the bound
    assert r.headers["x-frugalserve-budget-remaining-usd"]


async def test_downgrade_cascade_ends_in_429_when_nothing_fits(stack: Stack) -> None:
    stack.gateway.configure(user_config(limit_micros=20, on_exceeded="downgrade"))
    with pytest.raises(openai.RateLimitError) as exc:
        await stack.openai("alice").completions.create(model="big", prompt="p" * 10,
                                                       max_tokens=100)
    assert exc.value.body["code"] == "insufficient_quota"
    text = (await stack.http.get("/metrics")).text
    assert 'frugalserve_downgrades_total{fallback="small",model="big"' in text


async def test_downgrade_header_and_model(stack: Stack) -> None:
    stack.gateway.configure(user_config(limit_micros=500, on_exceeded="downgrade"))
    raw = await stack.openai("alice").with_raw_response.completions.create(
        model="big", prompt="p" * 10, max_tokens=100)
    assert raw.headers["x-frugalserve-downgraded"] == "big"
    out = raw.parse()
    assert out.model == "small"
    assert out.id in stack.engines["small"].produced


async def test_rate_limit_is_429_rate_limit_exceeded(stack: Stack) -> None:
    client = stack.openai("carol")
    await client.completions.create(model="small", prompt="p", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as exc:
        await client.completions.create(model="small", prompt="p", max_tokens=1)
    assert exc.value.body["code"] == "rate_limit_exceeded"
    assert "retry-after" in exc.value.response.headers


async def test_metrics_and_probes(stack: Stack) -> None:
    await stack.openai("alice").completions.create(model="small", prompt="abc", max_tokens=2)
    await stack.gateway.refresh(lambda: {"big": 1, "small": 2})
    text = (await stack.http.get("/metrics")).text
    assert 'frugalserve_tokens_total{kind="completion",model="small",tenant="alice"} 2.0' in text
    assert 'frugalserve_spend_micro_usd_total{model="small",tenant="alice"} 3.0' in text
    replica = stack.gateway.metrics.replica
    assert f'frugalserve_ready_replicas{{model="small",replica="{replica}"}} 2.0' in text
    assert "frugalserve_time_to_first_token_seconds_bucket" in text
    assert (await stack.http.get("/healthz")).status_code == 200
    assert (await stack.http.get("/readyz")).status_code == 200



async def test_replicas_sharing_a_ledger_report_identical_billing_counters(
        stack: Stack) -> None:
    """Token and spend counters come from the ledger, so whichever gateway replica the proxy
    picks for a scrape reports the same totals; per-replica series carry a `replica` label."""
    other = Gateway(stack.gateway.models, stack.gateway.clients, stack.ledger)
    other.configure(user_config())
    await stack.openai("alice").completions.create(model="small", prompt="abc", max_tokens=2)
    adm = await other.admit(other.authenticate("Bearer sk-bob"),
                            CompletionRequest(model="small", prompt="hi", max_tokens=3))
    async for _ in other.run(adm, SamplingParams(max_tokens=adm.max_tokens)):
        pass

    def billing(text: str) -> list[str]:
        return sorted(line for line in text.splitlines() if line.startswith(
            ("frugalserve_tokens_total", "frugalserve_spend_micro_usd_total")))

    first = (await stack.http.get("/metrics")).text
    second = other.metrics.render().decode()
    assert billing(first) == billing(second)
    assert 'frugalserve_tokens_total{kind="completion",model="small",tenant="bob"} 3.0' in first
    for gw, text, tenant in ((stack.gateway, first, "alice"), (other, second, "bob")):
        assert (f'frugalserve_requests_total{{model="small",outcome="length",'
                f'replica="{gw.metrics.replica}",tenant="{tenant}"}} 1.0') in text
    assert stack.gateway.metrics.replica != other.metrics.replica


async def test_stream_abandoned_before_its_first_byte_is_released(stack: Stack) -> None:
    """Drive the ASGI app by hand: the client is gone, so the first send fails."""
    app = create_app(stack.gateway)
    body = json.dumps({"model": "big", "prompt": "hi", "max_tokens": 50, "stream": True})
    messages = [{"type": "http.request", "body": body.encode(), "more_body": False}]

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        raise OSError("the client went away")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/completions", "raw_path": b"",
             "query_string": b"", "root_path": "", "server": ("test", 80),
             "client": ("127.0.0.1", 1), "headers": [
                 (b"authorization", f"Bearer {KEYS['alice']}".encode()),
                 (b"content-type", b"application/json")]}
    with pytest.raises(OSError):
        await app(scope, receive, send)
    usage = await asyncio.to_thread(stack.ledger.usage, "alice")
    assert (usage.in_flight, usage.reserved_micros, usage.spent_micros) == (0, 0, 0)
