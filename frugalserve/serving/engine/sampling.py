"""Next-token choice from logits: greedy, temperature, top-k, top-p, with a per-request seed.

`sample` is called by the scheduler once per forward pass, for all of its rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes; `temperature == 0` means greedy (argmax)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")


def logits_to_probs(logits: Tensor, temperature: float, top_k: int = 0,
                    top_p: float = 1.0) -> Tensor:
    """logits [V] -> probabilities [V] after temperature, top-k and nucleus (top-p) filtering."""
    logits = logits.float() / max(temperature, 1e-5)
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # mass strictly above each token
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # the top token stays
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        probs = probs / probs.sum()
    return probs


def sample(logits: Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None]) -> list[int]:
    """One token id per row of logits [B, V] (row i decodes with params[i], generators[i]):
    one argmax for the greedy rows, one draw per sampled row, and a single read-back of the
    ids (on a GPU, the step's one wait for the device)."""
    ids = torch.argmax(logits, dim=-1)  # [B]
    for row, (p, gen) in enumerate(zip(params, generators, strict=True)):
        if p.temperature > 0:
            probs = logits_to_probs(logits[row], p.temperature, p.top_k, p.top_p)
            ids[row] = torch.multinomial(probs, 1, generator=gen)[0]
    return ids.tolist()


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A private RNG per request on the logits' device, so a seeded request samples the same
    tokens in any batch."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen
