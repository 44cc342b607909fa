"""The two forward passes of serving, as small functions over a `Transformer` with a KV cache:
`prefill` (one prompt into its slot; `prefill_batch` for several at once) and `decode_step`
(one token for every running request), plus `CompiledDecode`, the single-slot decode step
through torch.compile.

Called by the scheduler; tests call them directly against a full forward pass. Inputs are
built on the host and copied to the model's device; nothing here reads a device tensor back.
"""

from __future__ import annotations

import time
import warnings

import torch
from torch import Tensor

from .model import Batch, Transformer


@torch.inference_mode()
def prefill(model: Transformer, prompt_ids: list[int], slot: int) -> Tensor:
    """Write the prompt's keys/values into `slot`; return the next-token logits [V]."""
    tokens = torch.tensor([prompt_ids], device=model.device)  # [1, T]
    batch = Batch.make([slot], torch.arange(len(prompt_ids))[None], model.device)  # pos [1, T]
    return model(tokens, batch, last_only=True)[0, -1]  # [1, 1, V] -> [V]


@torch.inference_mode()
def prefill_batch(model: Transformer, prompts: list[list[int]], slots: list[int],
                  pad_position: int) -> Tensor:
    """`prefill` of several prompts in one forward: next-token logits [N, V]. Prompts are
    left-padded to the longest, so each row's last column is its last prompt token; a padding
    token writes its key at `pad_position` of its slot, an entry the request never reads."""
    width = max(len(p) for p in prompts)
    pads = [width - len(p) for p in prompts]
    tokens = torch.tensor([[0] * n + p for n, p in zip(pads, prompts, strict=True)],
                          device=model.device)  # [N, T]
    positions = torch.tensor([[pad_position] * n + list(range(len(p)))
                              for n, p in zip(pads, prompts, strict=True)])  # [N, T]
    batch = Batch.make(slots, positions, model.device)
    return model(tokens, batch, last_only=True)[:, -1]  # [N, 1, V] -> [N, V]


@torch.inference_mode()
def decode_step(model: Transformer, token_ids: list[int], positions: list[int],
                slots: list[int]) -> Tensor:
    """Feed one token per row (row i: token_ids[i] at positions[i] in slots[i]); logits [B, V]."""
    tokens = torch.tensor(token_ids, device=model.device)[:, None]  # [B] -> [B, 1]
    batch = Batch.make(slots, torch.tensor(positions)[:, None], model.device)  # pos [B, 1]
    return model(tokens, batch)[:, 0]  # [B, 1, V] -> [B, V]


# Inductor settings of the compiled step: weights frozen into constants and pre-packed for the
# C++ GEMM template (AVX-512 micro-kernels; for int8 weights the dequantization runs inside it),
# the small ops (norms, RoPE, residuals, casts) fused into a few C++ loops. One GEMM backend, so
# nothing is benchmarked at compile time (bounded compile time).
COMPILE_OPTIONS = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP"}


def _import_freezing_deps() -> None:
    """Inductor's freezing pass imports torch.utils.mkldnn, whose TorchScript classes warn
    (DeprecationWarning) at import; import it here with that one warning silenced, so a
    compile in the engine's worker thread cannot fail under warnings-as-errors."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated",
                                DeprecationWarning)
        import torch.utils.mkldnn  # noqa: F401


class CompiledDecode:
    """`decode_step` for a batch of one row in slot 0, compiled on first call; CPU only (the
    inductor settings above are the CPU backend's).

    Same math as the eager step (greedy tokens identical in tests); only the cache length
    varies between calls and it is traced symbolically, so one graph serves every length but
    the full cache's, which runs eagerly (tested with guards on). After the compiling call,
    dynamo's guards (~0.3 ms a call, most of them on the model's parameters) are skipped
    unless `check_guards`: the inputs never change kind — token and position [1, 1] int64,
    slot 0, a length below the cache size — so they would always select that one graph. The
    frozen graph holds its own packed copy of the weights (prefill stays eager on them)."""

    def __init__(self, model: Transformer, check_guards: bool = False) -> None:
        self.model = model
        self.check_guards = check_guards
        self.compile_s: float | None = None  # wall time of the first (compiling) call
        cache = model.layers[0].attention.kv_cache
        assert cache is not None, "call Transformer.setup_cache first"
        self._max_length = cache.k.shape[2] - 1  # a full cache is another graph: eager
        self._slots = torch.zeros(1, dtype=torch.long)  # [1]: slot 0
        _import_freezing_deps()
        self._step = torch.compile(model.run, dynamic=True)

    @torch.inference_mode()
    def __call__(self, token_id: int, position: int) -> Tensor:
        """Feed token_id at `position` of slot 0; next-token logits [1, V]."""
        if position + 1 > self._max_length:  # the last cache entry: never reached by an engine
            return decode_step(self.model, [token_id], [position], [0])
        tokens = torch.tensor([[token_id]])  # [1, 1]
        batch = Batch(self._slots, torch.tensor([[position]]), (0, 1), position + 1, True)
        compiling = self.compile_s is None
        skip = not (compiling or self.check_guards)  # guards run on the compiling call
        start = time.perf_counter()
        with torch.compiler.set_stance(skip_guard_eval_unsafe=skip), \
                torch._inductor.config.patch(COMPILE_OPTIONS):  # also in case guards recompile
            logits = self._step(tokens, batch, position + 1, None)  # [1, 1, V]
        if compiling:
            self.compile_s = time.perf_counter() - start
        return logits[:, 0]  # [1, 1, V] -> [1, V]
