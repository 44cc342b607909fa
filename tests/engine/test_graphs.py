"""The graph decode step (`graphs.GraphDecode`): padded to batch buckets, attending over
length buckets under a mask, its inputs in a static buffer. On the CPU the padded step runs
eagerly, which proves the formulation the GPU captures; on a GPU it replays CUDA graphs. Both
give the eager step's tokens while requests join and leave (the batch changes size)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from frugalserve.serving.engine import Engine, SamplingParams
from frugalserve.serving.engine import scheduler as scheduler_module
from frugalserve.serving.engine.graphs import GraphDecode, batch_buckets, length_bucket
from frugalserve.serving.engine.scheduler import Scheduler

from .conftest import load_ours
from .test_batching import ARRIVALS, run, tokens

pytestmark = pytest.mark.engine

SAMPLED = {"temperature": 0.9, "top_p": 0.9, "seed": 3}


def test_buckets() -> None:
    assert batch_buckets(1) == [1]
    assert batch_buckets(4) == [1, 2, 4]
    assert batch_buckets(6) == [1, 2, 4, 6]
    assert batch_buckets(32) == [1, 2, 4, 8, 16, 32]
    assert [length_bucket(n, 256) for n in (1, 64, 65, 129, 256)] == [64, 64, 128, 256, 256]
    assert length_bucket(150, 192) == 192  # the last bucket is the cache length


def graph_scheduler(model: torch.nn.Module, graph_decode: bool) -> Scheduler:
    return Scheduler(model, lambda ids: "", max_batch_size=4, max_context_tokens=256,
                     graph_decode=graph_decode)


@pytest.mark.parametrize("params", [{}, SAMPLED], ids=["greedy", "seeded"])
def test_graph_step_yields_the_eager_tokens(dense_dir: Path, device: str, params: dict) -> None:
    """5 requests in 4 slots joining at steps 0, 3, 5 and 9 and leaving at their max_tokens:
    batches of 1 to 4 rows (3 is padded to 4), prompts crossing the 64-key length bucket."""
    model = load_ours(dense_dir, device=device)
    eager = run(model, ARRIVALS, params, graph_scheduler(model, False))
    scheduler = graph_scheduler(model, True)
    graphed = run(model, ARRIVALS, params, scheduler)
    assert {r: tokens(d) for r, d in graphed.items()} == {r: tokens(d) for r, d in eager.items()}
    assert scheduler.graphs is not None
    if device == "cuda":
        captured = scheduler.graphs.stats()["captured"]
        assert scheduler.graphs.failure is None
        assert {s for s, _ in captured} >= {2, 4} and {n for _, n in captured} >= {64, 128}


def test_padding_rows_in_a_live_cache_entry_are_caught(dense_dir: Path, device: str) -> None:
    """Negative control: padding rows that write at position 0 of slot 0 (where a running
    request keeps its first key) instead of the unused pad position change that request's
    tokens."""
    model = load_ours(dense_dir, device=device)
    eager = run(model, ARRIVALS, None, graph_scheduler(model, False))
    scheduler = graph_scheduler(model, True)
    assert scheduler.graphs is not None
    scheduler.graphs.pad_position = 0
    graphed = run(model, ARRIVALS, None, scheduler)
    assert tokens(graphed["r0"]) != tokens(eager["r0"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")
def test_a_failed_capture_falls_back_to_eager(dense_dir: Path, caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that raises while being captured (as an op that cannot be captured does): the
    warning is logged, the failure recorded, and the tokens are still the eager ones. (The
    error is raised in Python, so the CUDA context stays clean for the tests after this one.)"""
    model = load_ours(dense_dir, device="cuda")
    eager = run(model, ARRIVALS, None, graph_scheduler(model, False))
    forward = GraphDecode._forward

    def uncapturable_forward(self: GraphDecode, size: int, length: int) -> torch.Tensor:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("operation not permitted when stream is capturing")
        return forward(self, size, length)

    monkeypatch.setattr(GraphDecode, "_forward", uncapturable_forward)
    scheduler = graph_scheduler(model, True)
    with caplog.at_level(logging.WARNING):
        graphed = run(model, ARRIVALS, None, scheduler)
    assert {r: tokens(d) for r, d in graphed.items()} == {r: tokens(d) for r, d in eager.items()}
    assert scheduler.graphs is not None and scheduler.graphs.failure is not None
    assert scheduler.graphs.stats()["captured"] == []
    assert "decoding eagerly" in caplog.text


def test_graph_decode_is_refused_where_it_cannot_run(moe_dir: Path, dense_dir: Path) -> None:
    with pytest.raises(ValueError, match="MoE"):
        graph_scheduler(load_ours(moe_dir), True)
    with pytest.raises(ValueError, match="CUDA device"):
        Engine.from_source(f"file://{dense_dir}", max_batch_size=2, cuda_graphs=True)
    with pytest.raises(ValueError, match="CUDA device"):
        GraphDecode(load_ours(dense_dir), 2, 256)  # capture on the CPU


def test_graphs_are_on_by_default_for_dense_models_on_a_gpu_only(dense_dir: Path,
                                                                 device: str) -> None:
    model = load_ours(dense_dir, device=device)
    scheduler = Scheduler(model, lambda ids: "", max_batch_size=4, max_context_tokens=256)
    assert (scheduler.graphs is not None) == (device == "cuda")


@pytest.mark.parametrize("params", [{}, SAMPLED], ids=["greedy", "seeded"])
def test_batched_prefill_yields_the_solo_tokens(dense_dir: Path, device: str,
                                                params: dict) -> None:
    """Requests joining together (prompts of 5 and 61 tokens at step 0) prefill in one
    left-padded forward and still decode their one-at-a-time tokens."""
    model = load_ours(dense_dir, device=device)
    alone = run(model, ARRIVALS, params, Scheduler(model, lambda ids: "", max_batch_size=4,
                                                   max_context_tokens=256, graph_decode=False,
                                                   batch_prefill=False))
    together = Scheduler(model, lambda ids: "", max_batch_size=4, max_context_tokens=256,
                         batch_prefill=True)
    batched = run(model, ARRIVALS, params, together)
    assert {r: tokens(d) for r, d in batched.items()} == {r: tokens(d) for r, d in alone.items()}


def test_prefill_groups_fit_the_token_budget(dense_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_ours(dense_dir)
    scheduler = Scheduler(model, lambda ids: "", max_batch_size=4, max_context_tokens=256,
                          batch_prefill=True)
    monkeypatch.setattr(scheduler_module, "PREFILL_TOKENS", 100)
    for i, n in enumerate((10, 40, 20, 90)):
        scheduler.submit(f"r{i}", [1] * n, SamplingParams(max_tokens=1), lambda d: None)
    groups = scheduler._prefill_groups(list(scheduler.waiting))
    # 10 and 40 pad to 2 x 40; a third would be 3 x 40 > 100; 90 does not fit beside 20
    assert [[len(r.prompt_ids) for r in g] for g in groups] == [[10, 40], [20], [90]]
    scheduler.batch_prefill = False
    assert [len(g) for g in scheduler._prefill_groups(list(scheduler.waiting))] == [1, 1, 1, 1]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")
async def test_a_gpu_engine_decodes_through_graphs_and_reports_them(dense_dir: Path) -> None:
    engine = Engine.from_source(f"file://{dense_dir}", max_batch_size=2, device="cuda")
    try:
        assert engine.stats()["decode_graphs"]["captured"] == []  # captured on first use
        async for _ in engine.generate([1, 5, 6], SamplingParams(max_tokens=5)):
            pass
        graphs = engine.stats()["decode_graphs"]
        assert graphs["captured"] == [(1, 64)] and graphs["capture_s"] > 0
        assert graphs["failure"] is None
    finally:
        await engine.close()
