"""The two forward passes of serving, as small functions over a `Transformer` with a KV cache:
`prefill` (one prompt into its slot) and `decode_step` (one token for every running request).

Called by the scheduler; tests call them directly against a full forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .model import Batch, Transformer


@torch.inference_mode()
def prefill(model: Transformer, prompt_ids: list[int], slot: int) -> Tensor:
    """Write the prompt's keys/values into `slot`; return the next-token logits [V]."""
    tokens = torch.tensor([prompt_ids])  # [1, T]
    batch = Batch.make([slot], torch.arange(len(prompt_ids))[None])  # input_pos [1, T]
    return model(tokens, batch, last_only=True)[0, -1]  # [1, 1, V] -> [V]


@torch.inference_mode()
def decode_step(model: Transformer, token_ids: list[int], positions: list[int],
                slots: list[int]) -> Tensor:
    """Feed one token per row (row i: token_ids[i] at positions[i] in slots[i]); logits [B, V]."""
    tokens = torch.tensor(token_ids)[:, None]  # [B] -> [B, 1]
    batch = Batch.make(slots, torch.tensor(positions)[:, None])  # input_pos [B, 1]
    return model(tokens, batch)[:, 0]  # [B, 1, V] -> [B, V]
