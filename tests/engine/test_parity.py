"""Our decoder against transformers on the same safetensors files: greedy tokens identical,
and step-by-step decode logits equal to a full forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from frugalserve.serving.engine.checkpoint import load_model
from frugalserve.serving.engine.decode import decode_step, prefill
from frugalserve.serving.engine.model import Batch, RMSNorm

from .conftest import PROMPTS, greedy, hf_greedy, load_ours

pytestmark = pytest.mark.engine
N_NEW = 40


def hf_model(path: Path, device: str = "cpu") -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()


@pytest.mark.parametrize("layout", [None, 1, 16], ids=["linear", "transposed", "packed"])
@pytest.mark.parametrize("kind", ["dense_dir", "moe_dir"])
def test_greedy_tokens_equal_transformers(kind: str, layout: int | None, device: str,
                                          request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(kind)
    ours, ref = load_ours(path, layout=layout, device=device), hf_model(path, device)
    for prompt in PROMPTS:
        assert greedy(ours, prompt, N_NEW) == hf_greedy(ref, prompt, N_NEW), prompt


@pytest.mark.parametrize("kind", ["dense_dir", "moe_dir"])
def test_bf16_logits_are_as_close_to_fp32_as_transformers_bf16(
        kind: str, device: str, request: pytest.FixtureRequest) -> None:
    """bf16, the GPU deployments' default dtype: the relative L2 error of our logits against
    transformers fp32 is within 1.5x (+0.01) of transformers bf16's own (on the CPU: equal,
    1.1% dense, 8.9% MoE, where bf16 flips some router choices)."""
    path = request.getfixturevalue(kind)
    ref = hf_model(path, device)
    hf_bf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(device).eval()
    ours = load_model(path, torch.bfloat16, device)
    ours.setup_cache(1, 128)
    ours_err, hf_err = [], []
    for prompt in PROMPTS:
        tokens = torch.tensor([prompt], device=device)
        with torch.inference_mode():
            expected = ref(tokens).logits
            got = ours(tokens, Batch.make([0], torch.arange(len(prompt))[None], device))
            ours_err.append(float((got - expected).norm() / expected.norm()))
            hf_err.append(float((hf_bf16(tokens).logits.float() - expected).norm()
                                / expected.norm()))
    assert max(ours_err) <= 1.5 * max(hf_err) + 0.01


def test_mixtral_fused_expert_naming_loads_the_same(moe_dir: Path, tmp_path: Path) -> None:
    """transformers-5 in-memory naming (mlp.experts.gate_up_proj [E, 2I, D]) gives the same
    model as the per-expert naming on disk."""
    tensors = load_file(str(moe_dir / "model.safetensors"))
    config = json.loads((moe_dir / "config.json").read_text())
    fused = {}
    for i in range(config["num_hidden_layers"]):
        old = f"model.layers.{i}.block_sparse_moe."
        experts = range(config["num_local_experts"])
        fused[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([tensors.pop(f"{old}experts.{e}.w1.weight"),
                        tensors.pop(f"{old}experts.{e}.w3.weight")]) for e in experts])
        fused[f"model.layers.{i}.mlp.experts.down_proj"] = torch.stack(
            [tensors.pop(f"{old}experts.{e}.w2.weight") for e in experts])
        fused[f"model.layers.{i}.mlp.gate.weight"] = tensors.pop(f"{old}gate.weight")
    save_file(tensors | fused, str(tmp_path / "model.safetensors"))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((moe_dir / name).read_bytes())
    a, b = load_ours(moe_dir).state_dict(), load_ours(tmp_path).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("layout", [None, 1, 16], ids=["linear", "transposed", "packed"])
def test_step_decode_logits_equal_full_forward(dense_dir: Path, layout: int | None,
                                               device: str) -> None:
    """Tolerance: 1e-4 absolute on logits of unit scale (fp32 reordering only)."""
    model = load_ours(dense_dir, layout=layout, device=device)
    seq = PROMPTS[2][:40]
    full = model(torch.tensor([seq], device=device),
                 Batch.make([1], torch.arange(len(seq))[None], device))[0]  # [T, V]
    steps = [prefill(model, seq[:1], 0)]
    steps += [decode_step(model, [t], [i], [0])[0] for i, t in enumerate(seq[1:], 1)]
    torch.testing.assert_close(torch.stack(steps[:-1]), full[:-1], atol=1e-4, rtol=0)
    # negative control: a wrong position (off by one) is visibly wrong
    shifted = decode_step(model, [seq[-1]], [len(seq)], [0])[0]
    assert (shifted - full[-1]).abs().max() > 1e-2


def test_a_perturbed_checkpoint_is_caught(dense_dir: Path, tmp_path: Path, device: str) -> None:
    """Negative control for the parity test: a different rope theta changes the tokens."""
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((dense_dir / name).read_bytes())
    config = json.loads((dense_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"rope_theta": 500.0}))
    ref = hf_model(dense_dir, device)
    changed = load_ours(tmp_path, device=device)
    assert any(greedy(changed, p, N_NEW) != hf_greedy(ref, p, N_NEW) for p in PROMPTS)


@pytest.mark.parametrize("shape", [(1, 1, 128), (16, 1, 128), (1, 40, 128)])
def test_fused_rms_norm_is_bit_identical_to_the_formula(shape: tuple[int, ...]) -> None:
    """RMSNorm's fp32 fast path (F.rms_norm) against transformers' LlamaRMSNorm formula."""
    norm = RMSNorm(128, 1e-5)
    norm.weight.data = 1 + 0.1 * torch.randn(128, generator=torch.Generator().manual_seed(0))
    x = 5 * torch.randn(shape, generator=torch.Generator().manual_seed(1))
    expected = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    assert torch.equal(norm(x), expected)
