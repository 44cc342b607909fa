"""Continuous batching: requests joining at different steps yield exactly their solo tokens;
stop strings, EOS, max_tokens and cancellation end requests and free their slots."""

from __future__ import annotations

from pathlib import Path

import pytest

from frugalserve.serving.engine import model as model_module
from frugalserve.serving.engine.model import Transformer
from frugalserve.serving.engine.sampling import SamplingParams
from frugalserve.serving.engine.scheduler import Scheduler, TextStream, TokenDelta
from frugalserve.serving.engine.tokenizer import Tokenizer

from .conftest import PROMPTS, load_ours

pytestmark = pytest.mark.engine

# (step at which the request joins, prompt, max_tokens)
ARRIVALS = [(0, PROMPTS[0], 24), (0, PROMPTS[2], 12), (3, PROMPTS[1], 30), (5, PROMPTS[3], 20),
            (9, [1, 2 + 40, 77], 16)]


def run(model: Transformer, arrivals: list[tuple[int, list[int], int]],
        params: dict | None = None,
        scheduler: Scheduler | None = None) -> dict[str, list[TokenDelta]]:
    """Drive a scheduler (default: 4 slots, 256 tokens, the device's default decode step)
    step by step, submitting each request at its step; collect deltas."""
    scheduler = scheduler or Scheduler(model, lambda ids: "", max_batch_size=4,
                                       max_context_tokens=256)
    scheduler.eos_ids = set()  # run every request to max_tokens
    deltas: dict[str, list[TokenDelta]] = {}
    step = 0
    while step == 0 or scheduler.has_work() or any(s >= step for s, _, _ in arrivals):
        for i, (at, prompt, n) in enumerate(arrivals):
            if at == step:
                deltas[f"r{i}"] = []
                scheduler.submit(f"r{i}", prompt, SamplingParams(max_tokens=n, **(params or {})),
                                 deltas[f"r{i}"].append)  # type: ignore[arg-type]
        scheduler.step()
        step += 1
    return deltas


def tokens(deltas: list[TokenDelta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


@pytest.mark.parametrize("layout", [None, 16], ids=["linear", "packed"])
@pytest.mark.parametrize("kind", ["dense_dir", "moe_dir"])
@pytest.mark.parametrize("params", [{}, {"temperature": 0.9, "top_p": 0.9, "seed": 3}])
def test_staggered_batch_equals_solo(kind: str, params: dict, layout: int | None, device: str,
                                     request: pytest.FixtureRequest) -> None:
    """5 requests in 4 slots (one waits for a free slot), joining at steps 0, 3, 5 and 9."""
    model = load_ours(request.getfixturevalue(kind), layout=layout, device=device)
    batched = run(model, ARRIVALS, params)
    for i, arrival in enumerate(ARRIVALS):
        solo = run(model, [(0, *arrival[1:])], params)["r0"]
        assert tokens(batched[f"r{i}"]) == tokens(solo), i
        assert len(tokens(solo)) == arrival[2]
        last = batched[f"r{i}"][-1]
        assert (last.finish_reason, last.completion_tokens) == ("length", arrival[2])
        assert last.prompt_tokens == len(arrival[1])


def test_staggered_batch_detects_crosstalk(dense_dir: Path, device: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: without the per-row attention mask, rows at different positions read
    each other's (or stale) cache entries and the batched tokens differ from solo."""
    model = load_ours(dense_dir, device=device)
    solo = [tokens(run(model, [(0, *a[1:])])["r0"]) for a in ARRIVALS]
    monkeypatch.setattr(model_module, "attention_mask", lambda pos, length: None)
    batched = run(model, ARRIVALS)
    assert [tokens(batched[f"r{i}"]) for i in range(len(ARRIVALS))] != solo


def test_a_waiting_request_takes_a_slot_freed_by_cancel(dense_dir: Path) -> None:
    model = load_ours(dense_dir)
    scheduler = Scheduler(model, lambda ids: "", max_batch_size=1, max_context_tokens=64)
    got: dict[str, list[TokenDelta]] = {"a": [], "b": []}
    for rid in got:
        scheduler.submit(rid, PROMPTS[0], SamplingParams(max_tokens=50), got[rid].append)  # type: ignore[arg-type]
    scheduler.step()
    assert (len(scheduler.running), len(scheduler.waiting), scheduler.free_slots) == (1, 1, [])
    assert scheduler.cancel("a")
    assert scheduler.free_slots == [0]  # at once, before any further step
    assert got["a"][-1].finish_reason == "cancelled"
    scheduler.step()
    assert list(scheduler.running) == ["b"] and got["b"]
    assert not scheduler.cancel("missing")


def test_eos_stops_and_is_counted(dense_dir: Path) -> None:
    model = load_ours(dense_dir)
    first = tokens(run(model, [(0, PROMPTS[0], 8)])["r0"])
    scheduler = Scheduler(model, lambda ids: "", max_batch_size=1, max_context_tokens=64)
    scheduler.eos_ids = {first[3]}
    got: list[TokenDelta] = []
    scheduler.submit("r", PROMPTS[0], SamplingParams(max_tokens=8), got.append)  # type: ignore[arg-type]
    while scheduler.has_work():
        scheduler.step()
    assert tokens(got) == first[: first.index(first[3]) + 1]
    assert got[-1].finish_reason == "stop"
    assert got[-1].completion_tokens == len(tokens(got))


def test_context_limit_ends_with_length(dense_dir: Path) -> None:
    model = load_ours(dense_dir)
    scheduler = Scheduler(model, lambda ids: "", max_batch_size=1, max_context_tokens=12)
    scheduler.eos_ids = set()
    got: list[TokenDelta] = []
    scheduler.submit("r", PROMPTS[0], SamplingParams(max_tokens=100), got.append)  # type: ignore[arg-type]
    while scheduler.has_work():
        scheduler.step()
    assert (got[-1].finish_reason, got[-1].completion_tokens) == ("length", 12 - len(PROMPTS[0]))
    with pytest.raises(ValueError, match="context"):
        scheduler.submit("long", list(range(1, 13)), SamplingParams(max_tokens=1), got.append)  # type: ignore[arg-type]


def stream_all(pieces: list[str], stop: tuple[str, ...]) -> tuple[list[str], bool]:
    """Feed one token per piece through a TextStream whose 'tokenizer' joins pieces."""
    stream = TextStream(lambda ids: "".join(pieces[i] for i in ids), stop)
    out = []
    for i in range(len(pieces)):
        text, stopped = stream.push(i, final=i == len(pieces) - 1)
        out.append(text)
        if stopped:
            return out, True
    return out, False


def test_stop_string_split_across_tokens_is_never_emitted() -> None:
    out, stopped = stream_all(["Hello", " wo", "rld", "END", "more"], stop=("ld\nX", "rldE"))
    assert stopped and "".join(out) == "Hello wo"
    out, stopped = stream_all(["a", "b", "c"], stop=("bx",))
    assert not stopped and out == ["a", "", "bc"]  # "b" held back until it cannot start "bx"


def test_incomplete_utf8_is_held_back(dense_dir: Path) -> None:
    tok = Tokenizer.from_dir(dense_dir)
    ids = tok.encode("prix: 5€ ok")
    stream = TextStream(tok.decode, ())
    out = [stream.push(t, final=i == len(ids) - 1)[0] for i, t in enumerate(ids)]
    assert "".join(out) == "prix: 5€ ok"
    assert not any("\ufffd" in piece for piece in out)
