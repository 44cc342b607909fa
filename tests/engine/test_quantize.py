"""Weight-only int8 / int4 module swap: memory saved and logit error against fp32.

Bounds (max relative L2 logit error over the test prompts, seeded random weights, which are
harder on low-bit formats than trained ones): dense int8 per-channel <= 4%, int4 group 32 <= 30%,
group 64 <= 35%; MoE 10% / 40% / 45% (measured: 1.8/19/23% dense, 5.5/27/28% MoE)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from frugalserve.serving.engine.checkpoint import load_model
from frugalserve.serving.engine.model import Batch, Transformer
from frugalserve.serving.engine.quantize import (
    Int4Linear,
    Int8Linear,
    PackedLinear,
    Quantization,
    TransposedLinear,
    swap_linears,
    weight_bytes,
)

from .conftest import PROMPTS

pytestmark = pytest.mark.engine


def logits(model: Transformer, prompt: list[int]) -> torch.Tensor:
    model.setup_cache(1, 128)
    device = model.device
    with torch.inference_mode():
        return model(torch.tensor([prompt], device=device),
                     Batch.make([0], torch.arange(len(prompt))[None], device))


def rel_error(path: Path, quantization: Quantization, group_size: int = 32,
              device: str = "cpu") -> float:
    ref = load_model(path, device=device)
    q = swap_linears(load_model(path, device=device), quantization, group_size)
    errs = [(logits(q, p) - logits(ref, p)).norm() / logits(ref, p).norm() for p in PROMPTS]
    return float(max(errs))


@pytest.mark.parametrize(("kind", "quantization", "group", "bound"), [
    ("dense_dir", "int8", 32, 0.04), ("dense_dir", "int4", 32, 0.30),
    ("dense_dir", "int4", 64, 0.35),
    # MoE: quantization noise also flips some router choices
    ("moe_dir", "int8", 32, 0.10), ("moe_dir", "int4", 32, 0.40), ("moe_dir", "int4", 64, 0.45)])
def test_logit_error_within_bound(kind: str, quantization: str, group: int, bound: float,
                                  device: str, request: pytest.FixtureRequest) -> None:
    """On the CPU through torch's fused kernels, on a GPU through the bf16 dequant matmul."""
    err = rel_error(request.getfixturevalue(kind), Quantization(quantization), group, device)
    assert 0 < err <= bound


@pytest.mark.parametrize(("cls", "args"), [(Int8Linear, ()), (Int4Linear, (32,)),
                                           (Int4Linear, (64,))])
def test_dequant_matmul_equals_the_fused_cpu_kernel(cls: type, args: tuple) -> None:
    """The GPU path (weights dequantized to bf16, then a matmul), run here on the CPU, against
    the fused kernel on the same quantized weights: equal up to bf16 rounding (<= 1%)."""
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(256, 96, bias=False)
    linear.weight.data = torch.randn(96, 256, generator=gen) / 16
    x = torch.randn(5, 256, generator=gen)
    fused, dequant = cls(linear, *args, fused=True), cls(linear, *args, fused=False)
    assert (fused.fused, dequant.fused) == (True, False)
    y, ref = dequant(x), fused(x)
    assert float((y - ref).norm() / ref.norm()) <= 0.01
    # negative control: the other nibble order (or a wrong scale layout) is far off
    if cls is Int4Linear:
        dequant.weight = (dequant.weight >> 4) | (dequant.weight << 4)
        assert float((dequant(x) - ref).norm() / ref.norm()) > 0.1


def test_error_bound_is_meaningful(dense_dir: Path) -> None:
    """Negative control: another model's logits are far outside every bound above."""
    ref = load_model(dense_dir)
    other = load_model(dense_dir)
    torch.manual_seed(0)
    for p in other.parameters():
        p.data = p.data[torch.randperm(p.shape[0])] if p.dim() == 2 else p.data
    ref_logits = logits(ref, PROMPTS[0])
    assert (logits(other, PROMPTS[0]) - ref_logits).norm() / ref_logits.norm() > 0.5


def test_swap_replaces_every_linear_but_the_router(moe_dir: Path) -> None:
    model = swap_linears(load_model(moe_dir), "int8")
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Int8Linear" in kinds
    routers = [m for n, m in model.named_modules() if n.endswith("gate")]
    assert routers and all(isinstance(r, torch.nn.Linear) for r in routers)
    assert not any(isinstance(m, torch.nn.Linear) for n, m in model.named_modules()
                   if not n.endswith("gate"))


@pytest.mark.parametrize(("quantization", "cls", "max_ratio"),
                         [("none", TransposedLinear, 1.0), ("int8", Int8Linear, 0.35),
                          ("int4", Int4Linear, 0.25)])
def test_memory_saved(dense_dir: Path, quantization: str, cls: type, max_ratio: float) -> None:
    """Weights of the swapped layers shrink ~4x (int8) and ~6x (int4 + bf16 scales/zeros)."""
    fp = load_model(dense_dir)
    q = swap_linears(load_model(dense_dir), quantization)
    emb = fp.tok_embeddings.weight.numel() * 4
    ratio = (weight_bytes(q) - emb) / (weight_bytes(fp) - emb)
    assert any(isinstance(m, cls) for m in q.modules())
    assert ratio <= max_ratio


def test_int4_rejects_bad_group_size(dense_dir: Path) -> None:
    with pytest.raises(ValueError, match="group_size"):
        swap_linears(load_model(dense_dir), "int4", group_size=48)


def test_multi_slot_engines_get_the_packed_layout(dense_dir: Path) -> None:
    one = swap_linears(load_model(dense_dir), "none", max_batch=1)
    many = swap_linears(load_model(dense_dir), "none", max_batch=16)
    assert all(not isinstance(m, PackedLinear) for m in one.modules())
    assert isinstance(many.get_submodule("layers.0.attention.wqkv"), PackedLinear)
    assert weight_bytes(one) == weight_bytes(many)
