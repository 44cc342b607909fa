"""The official `openai` client against the real local Serve application with builtin models:
completions, streaming usage, error statuses, downgrade, disconnects and a concurrent burst
across 2 gateway and 2 model replicas sharing one ledger."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from frugalserve.serving import local
from frugalserve.serving.engine.checkpoint import resolve_source
from frugalserve.serving.engine.tokenizer import Tokenizer
from tests.serving.conftest import Served

pytestmark = pytest.mark.serving
Clients = Callable[[str], openai.OpenAI]
CHAT = [{"role": "user", "content": "What is the price of one million tokens?"}]


@pytest.fixture
def client(served: Served) -> Iterator[Callable[[str], openai.OpenAI]]:
    """An `openai.OpenAI` per tenant, closed after the test."""
    made: dict[str, openai.OpenAI] = {}

    def get(who: str) -> openai.OpenAI:
        if who not in made:
            key = served.plan.keys.get(f"default/{who}", "sk-nobody")
            made[who] = openai.OpenAI(base_url=served.base_url, api_key=key, max_retries=0)
        return made[who]

    yield get
    for c in made.values():
        c.close()


def settled_usage(served: Served, tenant: str, timeout_s: float = 10.0):  # noqa: ANN201
    """The tenant's usage once nothing is in flight."""
    deadline = time.monotonic() + timeout_s
    while (usage := served.ledger.usage(tenant)).in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    return usage


def test_chat_and_completion_usage_equal_engine_counts(served: Served, client: Clients) -> None:
    tok = Tokenizer.from_dir(resolve_source("builtin://tiny-dense"))
    before = served.ledger.usage("default/alice")
    c = client("alice")
    chat = c.chat.completions.create(model="dense", messages=CHAT, max_tokens=12)
    assert chat.model == "dense" and chat.choices[0].finish_reason in {"stop", "length"}
    assert chat.usage.prompt_tokens == len(tok.encode(tok.apply_chat_template(CHAT)))
    text = c.completions.create(model="dense", prompt="Hello, world!", max_tokens=7)
    assert text.usage.prompt_tokens == len(tok.encode("Hello, world!"))
    assert text.usage.completion_tokens <= 7
    after = settled_usage(served, "default/alice")
    assert after.tokens_prompt - before.tokens_prompt == (
        chat.usage.prompt_tokens + text.usage.prompt_tokens)
    assert after.tokens_completion - before.tokens_completion == (
        chat.usage.completion_tokens + text.usage.completion_tokens)
    assert after.spent_micros - before.spent_micros == (
        chat.usage.prompt_tokens + text.usage.prompt_tokens
        + 10 * (chat.usage.completion_tokens + text.usage.completion_tokens))


def test_streaming_ends_with_usage(served: Served, client: Clients) -> None:
    stream = client("alice").chat.completions.create(
        model="dense", messages=CHAT, max_tokens=16, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    if finish == "length":
        assert chunks[-1].usage.completion_tokens == 16
    settled = [s for s in served.ledger.settlements("default/alice")
               if s.request_id == chunks[0].id]
    assert settled[0].completion_tokens == chunks[-1].usage.completion_tokens


def test_error_statuses_in_openai_shape(served: Served, client: Clients) -> None:
    with pytest.raises(openai.AuthenticationError):
        client("nobody").models.list()
    assert [m.id for m in client("bob").models.list()] == ["lite"]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client("bob").chat.completions.create(model="dense", messages=CHAT, max_tokens=1)
    assert denied.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        client("alice").chat.completions.create(model="dense", messages=CHAT,
                                                        max_tokens=5000)
    assert bad.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as bad:
        client("alice").chat.completions.create(model="dense", messages=CHAT,
                                                        temperature=9, max_tokens=1)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.APIStatusError) as big:
        client("alice").completions.create(model="dense", prompt="x" * (2 << 20))
    assert big.value.status_code == 413


def test_downgrade_to_fallback_then_429(served: Served, client: Clients) -> None:
    raw = client("down").with_raw_response
    seen = []
    for _ in range(40):
        try:
            r = raw.completions.create(model="dense", prompt="Hello, world!", max_tokens=20)
        except openai.RateLimitError as exc:
            assert exc.body["code"] == "insufficient_quota"
            assert int(exc.response.headers["retry-after"]) > 0
            break
        seen.append((r.parse().model, r.headers.get("x-frugalserve-downgraded")))
    else:
        pytest.fail("the budget never ran out")
    assert seen[0] == ("dense", None)
    assert ("lite", "dense") in seen
    usage = settled_usage(served, "default/down")
    assert usage.spent_micros <= usage.limit_micros


async def test_disconnect_mid_stream_is_charged_what_was_received(served: Served) -> None:
    before = served.ledger.usage("default/leaver")
    body = {"model": "dense", "prompt": "Hello", "max_tokens": 480, "stream": True}
    headers = {"Authorization": f"Bearer {served.plan.keys['default/leaver']}"}
    async with httpx.AsyncClient(base_url=served.base_url, timeout=30) as http:  # noqa: SIM117
        async with http.stream("POST", "/completions", json=body, headers=headers) as r:
            assert r.status_code == 200
            received = 0
            async for line in r.aiter_lines():
                received += line.startswith("data: ")
                if received == 5:
                    break
    await asyncio.sleep(0.5)
    usage = await asyncio.to_thread(settled_usage, served, "default/leaver")
    charged = usage.tokens_completion - before.tokens_completion
    assert 5 <= charged < 480, charged


async def test_non_streaming_client_leaving_pays_the_prompt_and_frees_the_engine(
        served: Served) -> None:
    """A non-streaming client that hangs up before its completion arrives received none of it:
    it pays only its prompt, and its generation stops (the model replicas run nothing after)."""
    from ray import serve

    from frugalserve.serving.config import model_deployment_name

    stats = serve.get_deployment_handle(model_deployment_name("dense"),
                                        app_name=local.APP_NAME).stats
    before = served.ledger.usage("default/leaver")
    body = {"model": "dense", "prompt": "Hello", "max_tokens": 480, "temperature": 0}
    headers = {"Authorization": f"Bearer {served.plan.keys['default/leaver']}"}
    async with httpx.AsyncClient(base_url=served.base_url, timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/completions", json=body, headers=headers)
    usage = await asyncio.to_thread(settled_usage, served, "default/leaver")
    tok = Tokenizer.from_dir(resolve_source("builtin://tiny-dense"))
    assert usage.tokens_prompt - before.tokens_prompt == len(tok.encode("Hello"))
    assert usage.tokens_completion == before.tokens_completion
    # Greedy, "Hello" runs all 480 tokens (~1 s on an idle replica) unless stopped; ask both
    # replicas (the handle picks one at random per call) that nothing is running.
    running = [(await stats.remote())["running"] for _ in range(12)]
    assert running == [0] * 12, running


async def burst(target: Served, n: int = 200) -> tuple[int, int]:
    """n concurrent streams of 20 + 20 tokens from the burst tenant: (requests served,
    micro-USD of what they were served at dense's prices, from their usage chunks)."""
    body = {"model": "dense", "max_tokens": 20, "stream": True,
            "prompt": "p" * 20, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {target.plan.keys['default/burst']}"}
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=target.base_url, timeout=120, limits=limits) as http:

        async def one() -> int:
            async with http.stream("POST", "/completions", json=body, headers=headers) as r:
                if r.status_code == 429:
                    return -1
                assert r.status_code == 200
                usage = [json.loads(line[6:])["usage"] async for line in r.aiter_lines()
                         if '"usage":{' in line]
                return usage[0]["prompt_tokens"] + 10 * usage[0]["completion_tokens"]

        costs = [c for c in await asyncio.gather(*(one() for _ in range(n))) if c >= 0]
    return len(costs), sum(costs)


async def test_burst_of_200_streams_never_overspends(served: Served) -> None:
    served_ok, served_micros = await burst(served)
    usage = await asyncio.to_thread(settled_usage, served, "default/burst")
    assert usage.limit_micros is not None
    assert served_micros == usage.spent_micros <= usage.limit_micros
    assert 10 <= served_ok <= 200
    assert len(served.ledger.settlements("default/burst")) == served_ok


async def test_negative_control_check_then_charge_overspends(unsafe: Served) -> None:
    """The same burst against gateways that only check usage before running (no reservation):
    the requests in flight all pass the check, and far more is served than the budget pays for."""
    _, served_micros = await burst(unsafe)
    limit = (await asyncio.to_thread(settled_usage, unsafe, "default/burst")).limit_micros
    assert limit is not None
    assert served_micros > 2 * limit
