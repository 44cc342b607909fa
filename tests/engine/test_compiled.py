"""The compiled batch-1 decode step (`Engine(compile_decode=True)`, inductor with frozen,
pre-packed weights): the same greedy tokens as the eager step, an int8 error still inside its
bound, and single-slot engines only. Compiled once per session, on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from frugalserve.serving.engine import Engine, SamplingParams
from frugalserve.serving.engine.checkpoint import load_model
from frugalserve.serving.engine.decode import CompiledDecode, decode_step, prefill
from frugalserve.serving.engine.quantize import swap_linears

from .conftest import PROMPTS

pytestmark = pytest.mark.engine

NEW_TOKENS = 32


async def greedy_ids(engine: Engine, prompt: list[int]) -> list[int]:
    params = SamplingParams(max_tokens=NEW_TOKENS)
    return [t async for d in engine.generate(prompt, params) for t in d.token_ids]


async def test_compiled_engine_yields_the_eager_tokens(dense_dir: Path) -> None:
    """Several prompts (so several cache lengths) through one compiled step: no recompile."""
    source = f"file://{dense_dir}"
    eager = Engine.from_source(source, max_batch_size=1, num_threads=1)
    compiled = Engine.from_source(source, max_batch_size=1, num_threads=1, compile_decode=True)
    try:
        assert compiled.stats()["decode_compile_s"] is None  # lazily, on the first decode
        for prompt in PROMPTS:
            assert await greedy_ids(compiled, prompt) == await greedy_ids(eager, prompt)
        assert compiled.stats()["decode_compile_s"] > 0
    finally:
        await eager.close()
        await compiled.close()


@torch.inference_mode()
def test_one_graph_serves_every_cache_length(dense_dir: Path) -> None:
    """With dynamo's guards evaluated, lengths 2..128 (the whole cache) never recompile: the
    precondition for skipping the guards after the first call (CompiledDecode's default)."""
    model = swap_linears(load_model(dense_dir), "none", max_batch=1)
    model.setup_cache(1, 128)
    step = CompiledDecode(model, check_guards=True)
    frames_before = dict(torch._dynamo.utils.counters["frames"])
    prefill(model, [1, 5], 0)
    token = 7
    for position in range(1, 128):
        token = int(step(token, position).argmax())
    compiled = {k: v - frames_before.get(k, 0)
                for k, v in torch._dynamo.utils.counters["frames"].items()}
    assert compiled.get("ok", 0) == 1  # one frame compiled, for the first call only


@pytest.mark.parametrize("quantization", ["int8", "int4"])
@torch.inference_mode()
def test_compiled_quantized_logits_match_eager(dense_dir: Path, quantization: str) -> None:
    """Teacher-forced decode logits of the compiled int8 / int4 step against the eager one
    (which test_quantize bounds against fp32): <= 0.5% relative L2 error at every step
    (measured <= 0.2%); the compiled kernel dequantizes inside the GEMM and keeps its fp32
    output (no bf16 rounding)."""
    model = swap_linears(load_model(dense_dir), quantization, max_batch=1)
    model.setup_cache(1, 128)
    step = CompiledDecode(model)
    prompt = PROMPTS[2]
    tokens = [int(prefill(model, prompt, 0).argmax())]
    for i in range(16):
        pos = len(prompt) + i
        eager = decode_step(model, [tokens[-1]], [pos], [0])  # [1, V]
        compiled = step(tokens[-1], pos)  # rewrites the same cache entry
        assert float((compiled - eager).norm() / eager.norm()) <= 0.005
        tokens.append(int(eager.argmax()))


def test_compile_decode_needs_one_slot(dense_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_batch_size=1"):
        Engine.from_source(f"file://{dense_dir}", max_batch_size=2, compile_decode=True)
