"""Sampling alone: greedy, temperature, top-k, top-p, per-request seeds, a batch of rows."""

from __future__ import annotations

import pytest
import torch

from frugalserve.serving.engine.sampling import (
    SamplingParams,
    logits_to_probs,
    make_generator,
    sample,
)

pytestmark = pytest.mark.engine

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])


def test_greedy_is_argmax(device: str) -> None:
    logits = torch.stack([LOGITS, LOGITS.flip(0)]).to(device)  # [2, V]
    assert sample(logits, [SamplingParams(max_tokens=1)] * 2, [None, None]) == [0, 4]


def test_top_k_keeps_k_tokens() -> None:
    probs = logits_to_probs(LOGITS, temperature=1.0, top_k=2)
    assert (probs > 0).tolist() == [True, True, False, False, False]
    assert probs.sum().item() == pytest.approx(1.0)


def test_top_p_keeps_the_smallest_nucleus() -> None:
    full = torch.softmax(LOGITS, -1)
    probs = logits_to_probs(LOGITS, temperature=1.0, top_p=float(full[0] + 0.01))
    assert (probs > 0).tolist() == [True, True, False, False, False]
    only_top = logits_to_probs(LOGITS, temperature=1.0, top_p=0.01)
    assert only_top.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_temperature_sharpens_and_flattens() -> None:
    cold, hot = logits_to_probs(LOGITS, 0.1), logits_to_probs(LOGITS, 10.0)
    assert cold[0] > 0.99 and hot.max() < 0.3


def test_seed_reproduces_and_differs(device: str) -> None:
    params = SamplingParams(max_tokens=1, temperature=1.0)
    logits = torch.zeros(1, 1000, device=device)

    def draw(seed: int) -> list[int]:
        gen = make_generator(seed, device)
        return [t for _ in range(20) for t in sample(logits, [params], [gen])]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_each_row_samples_with_its_own_params_and_generator(device: str) -> None:
    """A seeded row draws the same tokens beside a greedy row and another seeded row as alone."""
    hot, greedy = SamplingParams(max_tokens=1, temperature=1.0), SamplingParams(max_tokens=1)
    logits = torch.zeros(3, 1000, device=device)
    logits[1, 42] = 5.0
    alone_gen, gens = make_generator(7, device), [make_generator(s, device) for s in (7, 0, 8)]
    alone = [sample(logits[:1], [hot], [alone_gen])[0] for _ in range(10)]
    rows = [sample(logits, [hot, greedy, hot], gens) for _ in range(10)]
    assert [r[0] for r in rows] == alone
    assert all(r[1] == 42 for r in rows)
    assert [r[2] for r in rows] != alone


@pytest.mark.parametrize("bad", [{"max_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0},
                                 {"top_k": -1}, {"stop": ("",)}])
def test_invalid_params_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**({"max_tokens": 4} | bad))
