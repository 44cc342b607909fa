"""The async Engine contract: concurrent streams share one batch, exact token counts,
cancellation frees slots at once, the event loop stays free, MoE telemetry in stats()."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from frugalserve.serving.engine import Engine, SamplingParams, TokenDelta
from frugalserve.serving.engine.telemetry import imbalance

pytestmark = pytest.mark.engine


@pytest.fixture
async def engine(tmp_path_factory: pytest.TempPathFactory, device: str) -> Engine:
    cache = tmp_path_factory.getbasetemp() / "builtin-cache"
    eng = Engine.from_source("builtin://tiny-moe", cache_dir=cache, max_batch_size=4,
                             num_threads=1, device=device)
    yield eng
    await eng.close()


async def collect(engine: Engine, prompt: list[int], params: SamplingParams,
                  rid: str | None = None) -> list[TokenDelta]:
    return [d async for d in engine.generate(prompt, params, request_id=rid)]


async def test_concurrent_streams_share_a_batch_and_count_exactly(engine: Engine) -> None:
    prompts = [engine.encode(t) for t in ("Hello, world!", "What is the price", "a", "tokens")]
    params = SamplingParams(max_tokens=20)
    solo = [await collect(engine, p, params) for p in prompts]
    steps_before = engine.stats()["steps"]
    together = await asyncio.gather(*(collect(engine, p, params) for p in prompts))
    assert engine.stats()["steps"] - steps_before <= 21  # shared steps, not 4 x 20
    for p, one, many in zip(prompts, solo, together, strict=True):
        assert [d.token_ids for d in one] == [d.token_ids for d in many]
        last = many[-1]
        assert last.finish_reason in ("stop", "length")
        assert all(d.finish_reason is None for d in many[:-1])
        assert last.prompt_tokens == len(p)
        assert last.completion_tokens == sum(len(d.token_ids) for d in many)
        ids = [t for d in many for t in d.token_ids]
        assert "".join(d.text for d in many) == engine.decode(ids)


async def test_closing_the_iterator_frees_the_slot_at_once(engine: Engine) -> None:
    stream = engine.generate([1, 5, 6], SamplingParams(max_tokens=200), request_id="x")
    first = await anext(stream)
    assert first.finish_reason is None and engine.stats()["running"] == 1
    await stream.aclose()
    assert engine.stats()["running"] == 0 and engine.stats()["free_slots"] == 4


async def test_cancelling_the_consumer_task_frees_the_slot(engine: Engine) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate([1, 5, 6], SamplingParams(max_tokens=500)):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.stats()["running"] == 0


async def test_engine_cancel_ends_the_stream(engine: Engine) -> None:
    stream = engine.generate([1, 5, 6], SamplingParams(max_tokens=500), request_id="c")
    await anext(stream)
    assert engine.cancel("c")
    rest = [d async for d in stream]
    assert rest[-1].finish_reason == "cancelled"
    assert rest[-1].completion_tokens == sum(len(d.token_ids) for d in rest) + 1


async def test_the_event_loop_is_not_blocked(engine: Engine) -> None:
    """A 5 ms ticker keeps ticking while four streams decode."""
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.005)

    tick_task = asyncio.create_task(ticker())
    await asyncio.gather(*(collect(engine, [1, 9, i], SamplingParams(max_tokens=60))
                           for i in range(4)))
    tick_task.cancel()
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert len(ticks) > 5 and max(gaps) < 0.25


async def test_stop_string_ends_the_stream_without_it(engine: Engine) -> None:
    prompt = engine.encode("Hello")
    free = "".join(d.text for d in await collect(engine, prompt, SamplingParams(max_tokens=30)))
    stop = free[5:8]
    assert len(stop) == 3 and stop not in free[:5]
    deltas = await collect(engine, prompt, SamplingParams(max_tokens=30, stop=(stop,)))
    assert deltas[-1].finish_reason == "stop"
    assert "".join(d.text for d in deltas) == free[: free.index(stop)]


async def test_invalid_prompts_are_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="at least one token"):
        await collect(engine, [], SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="context"):
        await collect(engine, [1] * engine.max_context_tokens, SamplingParams(max_tokens=1))


async def test_moe_stats_count_every_routed_token(engine: Engine) -> None:
    args = engine.model.args
    before = engine.stats()["moe"]["expert_tokens"]
    deltas = await collect(engine, [1, 2 + 40, 3 + 50], SamplingParams(max_tokens=10))
    stats = engine.stats()
    assert (stats["architecture"], stats["device"]) == ("moe", str(engine.model.device))
    moe = stats["moe"]
    n_tokens = 3 + deltas[-1].completion_tokens - 1  # the last sampled token is never fed
    for layer_before, layer_after in zip(before, moe["expert_tokens"], strict=True):
        assert sum(layer_after) - sum(layer_before) == n_tokens * args.moe.top_k
    assert len(moe["cv"]) == args.n_layers and len(moe["collapsed_share"]) == args.n_layers


def test_imbalance_scores() -> None:
    balanced = torch.tensor([[5, 5, 5, 5], [8, 0, 0, 0], [0, 0, 0, 0]])
    scores = imbalance(balanced)
    assert scores["cv"][0] == 0.0
    assert scores["cv"][1] == pytest.approx(3 ** 0.5)  # one expert takes everything
    assert scores["collapsed_share"] == [0.0, 0.75, 0.0]  # an idle window is not a collapse

