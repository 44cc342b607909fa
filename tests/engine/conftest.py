"""Shared fixtures of the engine tests: tiny seeded checkpoints written once per session, the
`device` every equivalence test runs on (cpu; cuda too where torch sees a GPU), and helpers
that decode greedily with our functions and with transformers on the same files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from frugalserve.serving.engine.checkpoint import load_model, write_checkpoint
from frugalserve.serving.engine.decode import decode_step, prefill
from frugalserve.serving.engine.graphs import GraphDecode, graphs_by_default
from frugalserve.serving.engine.model import ModelArgs, Transformer
from frugalserve.serving.engine.quantize import swap_linears

PROMPTS = [[1, 17, 42, 99, 5], [1, 300], [1, *range(100, 160)], [1, 7, 7, 7, 7, 7, 7, 7, 7, 250]]
DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")])]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def dense_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("dense"), ModelArgs.from_name("tiny-dense"))


@pytest.fixture(scope="session")
def moe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("moe"), ModelArgs.from_name("tiny-moe"),
                            seed=1)


def load_ours(path: Path, max_batch: int = 4, max_seq: int = 256,
              layout: int | None = None, device: str = "cpu") -> Transformer:
    """Our model with nn.Linear weights, or with the fp inference layout an engine of
    `layout` slots uses (CPU: 1 pre-transposed, more oneDNN-packed; GPU: nn.Linear)."""
    model = load_model(path, torch.float32, device)
    if layout is not None:
        swap_linears(model, "none", max_batch=layout)
    model.setup_cache(max_batch, max_seq)
    return model


def greedy(model: Transformer, prompt: list[int], n: int, slot: int = 0) -> list[int]:
    """n greedy tokens from our prefill and decode step (EOS does not stop it); a dense model
    on a GPU decodes through CUDA graphs, as an engine there does."""
    cache_len = model.layers[0].attention.kv_cache.k.shape[2]
    graphs = GraphDecode(model, 1, cache_len) if graphs_by_default(model) else None
    out = [int(prefill(model, prompt, slot).argmax())]
    while len(out) < n:
        rows = ([out[-1]], [len(prompt) + len(out) - 1], [slot])
        logits = decode_step(model, *rows) if graphs is None else graphs(*rows)
        out.append(int(logits[0].argmax()))
    return out


def hf_greedy(hf_model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens from transformers.generate (EOS disabled so lengths match)."""
    with torch.no_grad():
        ids = hf_model.generate(torch.tensor([prompt], device=hf_model.device), max_new_tokens=n,
                                do_sample=False, eos_token_id=None, pad_token_id=0)
    return ids[0, len(prompt):].tolist()
