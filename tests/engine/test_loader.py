"""The checkpoint loader: every source scheme, both weight layouts on disk (single, sharded),
and clear refusals of broken checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from frugalserve.serving.engine import CheckpointError, Engine, SamplingParams
from frugalserve.serving.engine.checkpoint import (
    builtin_checkpoint,
    load_model,
    resolve_source,
    write_checkpoint,
)
from frugalserve.serving.engine.model import ModelArgs
from frugalserve.serving.engine.tokenizer import Tokenizer

pytestmark = pytest.mark.engine


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_config(path: Path, **changes: object) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | changes))


def edit_tensors(path: Path, change: callable) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = load_model(a).state_dict(), load_model(b).state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_weights_and_buffers_load_onto_the_device(moe_dir: Path, device: str) -> None:
    """Every parameter and buffer (rope tables, expert counters, the KV cache) lands on the
    device, with the values the CPU load gives."""
    model = load_model(moe_dir, device=device)
    model.setup_cache(2, 64)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert {t.device.type for t in tensors.values()} == {torch.device(device).type}
    cpu = load_model(moe_dir)
    cpu_tensors = dict(cpu.named_parameters()) | dict(cpu.named_buffers())
    assert all(torch.equal(cpu_tensors[k], tensors[k].cpu()) for k in cpu_tensors)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"device": "tpu"}, r"device='tpu' is not supported; use 'cpu', 'cuda' or 'cuda:N'"),
    ({"device": "cuda:x"}, r"device='cuda:x' is not supported"),
    ({"device": "cuda"}, r"device='cuda' needs a CUDA GPU.*is_available\(\) is False"),
    ({"device": "cuda:1", "compile_decode": True, "max_batch_size": 1},
     r"compile_decode runs on the CPU only; got device='cuda:1'")],
    ids=["unknown", "malformed", "no-gpu", "compiled-off-cpu"])
def test_device_argument_is_validated(dense_dir: Path, kwargs: dict, message: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before any weight is read, with a message naming the `device` parameter (on
    any machine: torch is told it sees no GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=message):
        Engine.from_source(f"file://{dense_dir}", **kwargs)


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path: Path) -> None:
    args = ModelArgs.from_name("tiny-moe")
    single = write_checkpoint(tmp_path / "single", args, seed=5)
    sharded = write_checkpoint(tmp_path / "sharded", args, seed=5, max_shard_bytes=2_000_000)
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 2
    assert not (sharded / "model.safetensors").exists()
    assert same_weights(single, sharded)


def test_builtin_checkpoints_are_deterministic(tmp_path: Path) -> None:
    a = builtin_checkpoint("tiny-dense", tmp_path / "a")
    b = builtin_checkpoint("tiny-dense", tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert builtin_checkpoint("tiny-dense", tmp_path / "a") == a  # written once, then reused


def test_checkpoint_dtype_is_kept_with_auto(dense_dir: Path, tmp_path: Path) -> None:
    path = copy(dense_dir, tmp_path / "bf16")
    edit_tensors(path, lambda t: t.update({k: v.bfloat16() for k, v in t.items()}))
    assert load_model(path).tok_embeddings.weight.dtype == torch.bfloat16
    assert load_model(path, torch.float32).tok_embeddings.weight.dtype == torch.float32


def test_tokenizer_and_chat_template_come_from_the_checkpoint(dense_dir: Path,
                                                              tmp_path: Path) -> None:
    path = copy(dense_dir, tmp_path / "chat")
    (path / "chat_template.jinja").write_text(
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}{% endfor %}")
    tok = Tokenizer.from_dir(path)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "[user]hi</s>"
    assert tok.decode(tok.encode("Hello, world! €")) == "Hello, world! €"
    default = Tokenizer.from_dir(dense_dir).apply_chat_template([{"role": "user", "content": "x"}])
    assert default == "<|user|>\nx\n<|assistant|>\n"


async def test_file_and_pvc_sources_load_the_same_model(
        moe_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy(moe_dir, tmp_path / "claim" / "models" / "m")
    monkeypatch.setenv("FRUGALSERVE_PVC_ROOT", str(tmp_path))
    params = SamplingParams(max_tokens=12)
    outputs = []
    for source in (f"file://{moe_dir}", "pvc://claim/models/m"):
        engine = Engine.from_source(source, num_threads=1, max_batch_size=1)
        assert (engine.architecture, engine.model_name) == ("moe", source)
        outputs.append([d.token_ids async for d in engine.generate([1, 2, 3], params)])
        await engine.close()
    assert outputs[0] == outputs[1]


def test_hf_sources_resolve_from_the_local_cache_only(
        dense_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        resolve_source("hf://org/name")
    repo = tmp_path / "hf" / "hub" / "models--org--name"
    copy(dense_dir, repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    assert resolve_source("hf://org/name") == repo / "snapshots" / ("a" * 40)
    assert resolve_source("hf://org/name", revision="a" * 40) == repo / "snapshots" / ("a" * 40)
    with pytest.raises(CheckpointError, match="revision v2"):
        resolve_source("hf://org/name", revision="v2")


@pytest.mark.parametrize(("source", "message"), [
    ("nothing", "scheme://path"), ("s4://bucket/x", "unsupported scheme 's4'"),
    ("builtin://huge", "unknown builtin model 'huge'"), ("file:///no/such/dir", "does not exist"),
    ("pvc://claim/absent", "does not exist")])
def test_bad_sources_are_refused(source: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        resolve_source(source)


def _drop_config(p: Path) -> None:
    (p / "config.json").unlink()


def _drop_weights(p: Path) -> None:
    (p / "model.safetensors").unlink()


def _drop_tensor(p: Path) -> None:
    edit_tensors(p, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))


def _extra_tensor(p: Path) -> None:
    edit_tensors(p, lambda t: t.update({"model.layers.0.mlp.fc_in.weight": torch.zeros(2)}))


def _wrong_shape(p: Path) -> None:
    edit_config(p, intermediate_size=400)


def _unknown_arch(p: Path) -> None:
    edit_config(p, architectures=["GPT2LMHeadModel"])


def _rope_scaling(p: Path) -> None:
    edit_config(p, rope_scaling={"rope_type": "yarn", "factor": 4.0})


def _missing_shard(p: Path) -> None:
    write_checkpoint(p, ModelArgs.from_name("tiny-dense"), max_shard_bytes=1_000_000)
    next(iter(sorted(p.glob("model-*.safetensors")))).unlink()


@pytest.mark.parametrize(("breakage", "message"), [
    (_drop_config, "missing config.json"),
    (_drop_weights, "no model.safetensors or model.safetensors.index.json"),
    (_drop_tensor, "missing tensor 'model.layers.1.mlp.up_proj.weight'"),
    (_extra_tensor, r"unexpected tensors .*fc_in"),
    (_wrong_shape, r"layers.0.feed_forward.w13.weight has shape \(768, 128\), config.json "
                   r"implies \(800, 128\)"),
    (_unknown_arch, r"unknown architecture \['GPT2LMHeadModel'\]; supported"),
    (_rope_scaling, "rope scaling"),
    (_missing_shard, "lists shards that are missing")])
def test_broken_checkpoints_are_refused_clearly(dense_dir: Path, tmp_path: Path,
                                                breakage: callable, message: str) -> None:
    path = copy(dense_dir, tmp_path / "broken")
    assert same_weights(dense_dir, path)  # the copy alone loads: the breakage is the cause
    if breakage is _missing_shard:
        (path / "model.safetensors").unlink()
    breakage(path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)
