"""MoE routing telemetry: per-layer, per-expert routed-token counts and imbalance scores.

The engine snapshots the model's cumulative counters after every step; `stats()` reports the
live totals and, over the trailing window since the oldest snapshot, the coefficient of
variation of the per-expert counts and the share of experts that received no token at all
(expert collapse).
"""

from __future__ import annotations

from collections import deque

import torch

from .model import MoeFeedForward, Transformer


def routed_counts(model: Transformer) -> torch.Tensor:
    """Cumulative routed-token counts [n_layers, n_experts] (token-expert assignments)."""
    rows = [m.routed_tokens for m in model.modules() if isinstance(m, MoeFeedForward)]
    return torch.stack(rows).clone()


def imbalance(counts: torch.Tensor) -> dict[str, list[float]]:
    """counts [L, E] -> per layer: coefficient of variation (std / mean) and collapsed share."""
    c = counts.double()
    mean = c.mean(dim=1)
    cv = torch.where(mean > 0, c.std(dim=1, correction=0) / mean.clamp(min=1e-12), 0.0)
    collapsed = torch.where(c.sum(dim=1) > 0, (c == 0).double().mean(dim=1), 0.0)  # idle: 0
    return {"cv": cv.tolist(), "collapsed_share": collapsed.tolist()}


class ExpertTelemetry:
    """Keeps the last `window` snapshots of the model's counters to score recent routing."""

    def __init__(self, model: Transformer, window: int = 256) -> None:
        self.model = model
        self.snapshots: deque[torch.Tensor] = deque([routed_counts(model)], maxlen=window + 1)

    def record_step(self) -> None:
        self.snapshots.append(routed_counts(self.model))

    def stats(self) -> dict:
        total = routed_counts(self.model)  # live: includes every token already streamed
        recent = total - self.snapshots[0]  # [L, E] over the window
        return {"window_steps": len(self.snapshots) - 1,
                "expert_tokens": total.tolist(), "window_expert_tokens": recent.tolist(),
                **imbalance(recent)}
