"""Hugging Face checkpoints on local disk: resolve a model source, read config + safetensors
into a `Transformer`, and write seeded builtin models as real checkpoints.

Called by `Engine.from_source`; tests and the bench use `write_checkpoint` to make checkpoints
that both this loader and `transformers` read.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .model import (
    PRESETS,
    ModelArgs,
    MoeArgs,
    MoeFeedForward,
    Transformer,
    init_weights,
    rope_cache,
)
from .tokenizer import DEFAULT_CHAT_TEMPLATE, build_byte_bpe

ARCHITECTURES = {"LlamaForCausalLM": "dense", "MixtralForCausalLM": "moe"}
BUILTIN_FORMAT = 1  # bump when builtin checkpoints change, so stale caches are rewritten


class CheckpointError(ValueError):
    """A model source or checkpoint that cannot be loaded; the message says what and where."""


# ---------------------------------------------------------------- sources


def resolve_source(source: str, *, revision: str | None = None,
                   cache_dir: str | os.PathLike | None = None) -> Path:
    """Map `builtin://`, `file://`, `pvc://` and `hf://` sources to a local checkpoint dir."""
    scheme, sep, rest = source.partition("://")
    if not sep or not rest:
        raise CheckpointError(f"model source {source!r} must look like scheme://path")
    if scheme == "builtin":
        return builtin_checkpoint(rest, cache_dir)
    if scheme == "file":
        return _existing_dir(Path(rest), source)
    if scheme == "pvc":
        root = Path(os.environ.get("FRUGALSERVE_PVC_ROOT", "/mnt/pvc"))
        return _existing_dir(root / rest, source)
    if scheme == "hf":
        return hf_snapshot_dir(rest, revision)
    raise CheckpointError(f"model source {source!r}: unsupported scheme {scheme!r} "
                          "(builtin, file, pvc, hf)")


def _existing_dir(path: Path, source: str) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"model source {source!r}: directory {path} does not exist")
    return path


def hf_snapshot_dir(repo_id: str, revision: str | None = None) -> Path:
    """Find `org/name` in the local HF cache ($HF_HUB_CACHE or $HF_HOME/hub); no downloads."""
    hub = Path(os.environ.get("HF_HUB_CACHE") or
               Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    repo_dir = hub / f"models--{repo_id.replace('/', '--')}"
    rev = revision or "main"
    ref = repo_dir / "refs" / rev
    commit = ref.read_text().strip() if ref.is_file() else rev
    snapshot = repo_dir / "snapshots" / commit
    if not snapshot.is_dir():
        raise CheckpointError(
            f"hf://{repo_id} (revision {rev}) is not in the local Hugging Face cache: {snapshot} "
            "does not exist; downloads are disabled, so pre-populate the cache or mount it "
            "(HF_HOME / HF_HUB_CACHE)")
    return snapshot


def builtin_checkpoint(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The checkpoint dir of a builtin preset, written (seeded, deterministic) on first use."""
    if name not in PRESETS:
        raise CheckpointError(f"unknown builtin model {name!r}; known: {sorted(PRESETS)}")
    root = Path(cache_dir or os.environ.get("FRUGALSERVE_CACHE",
                                            Path.home() / ".cache" / "frugalserve"))
    path = root / "builtin" / f"{name}-v{BUILTIN_FORMAT}"
    if not (path / "config.json").is_file():
        root.joinpath("builtin").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root / "builtin", prefix=f".{name}-"))
        write_checkpoint(tmp, PRESETS[name], seed=0)
        try:
            tmp.rename(path)
        except OSError:  # another process won the race: its copy is identical
            shutil.rmtree(tmp)
    return path


# ---------------------------------------------------------------- config


def args_from_config(config: dict, path: Path) -> ModelArgs:
    """HF `config.json` (Llama or Mixtral, transformers 4 or 5 keys) -> ModelArgs."""
    archs = config.get("architectures") or []
    arch = next((a for a in archs if a in ARCHITECTURES), None)
    if arch is None:
        raise CheckpointError(f"{path / 'config.json'}: unknown architecture {archs!r}; "
                              f"supported: {sorted(ARCHITECTURES)}")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise CheckpointError(f"{path / 'config.json'}: rope scaling {rope!r} is not supported")
    eos = config.get("eos_token_id", 2)
    moe = None
    if ARCHITECTURES[arch] == "moe":
        moe = MoeArgs(config["num_local_experts"], config["num_experts_per_tok"])
    n_heads = config["num_attention_heads"]
    return ModelArgs(
        vocab_size=config["vocab_size"], dim=config["hidden_size"],
        n_layers=config["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads") or n_heads,
        intermediate_size=config["intermediate_size"],
        head_dim=config.get("head_dim") or config["hidden_size"] // n_heads,
        norm_eps=config.get("rms_norm_eps", 1e-5),
        rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
        max_seq_len=config.get("max_position_embeddings", 2048),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        bos_token_id=config.get("bos_token_id"),
        eos_token_ids=tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,)),
        moe=moe)


def config_from_args(args: ModelArgs) -> dict:
    """ModelArgs -> HF `config.json` that transformers loads as Llama or Mixtral."""
    config = {
        "architectures": ["LlamaForCausalLM" if args.moe is None else "MixtralForCausalLM"],
        "model_type": "llama" if args.moe is None else "mixtral",
        "vocab_size": args.vocab_size, "hidden_size": args.dim,
        "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads, "intermediate_size": args.intermediate_size,
        "head_dim": args.head_dim, "rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta,
        "max_position_embeddings": args.max_seq_len, "hidden_act": "silu",
        "tie_word_embeddings": args.tie_embeddings, "bos_token_id": args.bos_token_id,
        "eos_token_id": list(args.eos_token_ids), "torch_dtype": "float32",
        "attention_bias": False, "mlp_bias": False,
    }
    if args.moe is not None:
        config |= {"num_local_experts": args.moe.num_experts,
                   "num_experts_per_tok": args.moe.top_k, "router_jitter_noise": 0.0}
    return config


# ---------------------------------------------------------------- weights


def _tensor_files(path: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, from the shard index or the single file."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {name: path / shard for name, shard in weight_map.items()}
        missing = sorted({str(f) for f in files.values() if not f.is_file()})
        if missing:
            raise CheckpointError(f"{index} lists shards that are missing: {missing}")
        return files
    single = path / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")
    with safe_open(str(single), "pt") as f:
        return {name: single for name in f.keys()}  # noqa: SIM118 (safe_open is not a dict)


class _Reader:
    """Lazy access to the checkpoint's tensors across shards, each read straight onto
    `device`; tracks which ones were used."""

    def __init__(self, files: dict[str, Path], device: torch.device) -> None:
        self.files = files
        self.device = device
        self.used: set[str] = set()
        self._handles: dict[Path, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def get(self, name: str) -> Tensor:
        if name not in self.files:
            raise CheckpointError(f"checkpoint is missing tensor {name!r}")
        file = self.files[name]
        if file not in self._handles:
            self._handles[file] = safe_open(str(file), "pt", device=str(self.device))
        self.used.add(name)
        return self._handles[file].get_tensor(name)  # type: ignore[attr-defined]


def _hf_names(args: ModelArgs, reader: _Reader) -> Iterator[tuple[str, Callable[[], Tensor]]]:
    """(our parameter name, loader of its value from HF tensors) for every parameter."""
    cat = torch.cat
    yield "tok_embeddings.weight", lambda: reader.get("model.embed_tokens.weight")
    yield "norm.weight", lambda: reader.get("model.norm.weight")
    head = "lm_head.weight" if "lm_head.weight" in reader else "model.embed_tokens.weight"
    yield "output.weight", lambda: reader.get(head)
    for i in range(args.n_layers):
        hf, ours = f"model.layers.{i}.", f"layers.{i}."
        a = hf + "self_attn."
        yield ours + "attention.wqkv.weight", lambda a=a: cat(
            [reader.get(a + f"{p}_proj.weight") for p in "qkv"])
        yield ours + "attention.wo.weight", lambda a=a: reader.get(a + "o_proj.weight")
        yield ours + "attention_norm.weight", lambda hf=hf: reader.get(
            hf + "input_layernorm.weight")
        yield ours + "ffn_norm.weight", lambda hf=hf: reader.get(
            hf + "post_attention_layernorm.weight")
        ff = ours + "feed_forward."
        if args.moe is None:
            m = hf + "mlp."
            yield ff + "w13.weight", lambda m=m: cat(
                [reader.get(m + "gate_proj.weight"), reader.get(m + "up_proj.weight")])
            yield ff + "w2.weight", lambda m=m: reader.get(m + "down_proj.weight")
        else:
            yield from _expert_names(args.moe, hf, ff, reader)


def _expert_names(moe: MoeArgs, hf: str, ff: str,
                  reader: _Reader) -> Iterator[tuple[str, Callable[[], Tensor]]]:
    """Mixtral experts: per-expert `block_sparse_moe.experts.N.w1/w2/w3` (checkpoints on disk)
    or transformers-5 fused `mlp.experts.gate_up_proj [E, 2I, D]` / `down_proj [E, D, I]`."""
    fused = hf + "mlp.experts.gate_up_proj" in reader
    gate = hf + ("mlp.gate.weight" if fused else "block_sparse_moe.gate.weight")
    yield ff + "gate.weight", lambda: reader.get(gate)
    # fused [E, ...] tensors are read once per layer, not once per expert
    gate_up = functools.cache(lambda: reader.get(hf + "mlp.experts.gate_up_proj"))
    down = functools.cache(lambda: reader.get(hf + "mlp.experts.down_proj"))
    for e in range(moe.num_experts):
        ours = f"{ff}experts.{e}."
        if fused:
            yield ours + "w13.weight", lambda e=e: gate_up()[e]
            yield ours + "w2.weight", lambda e=e: down()[e]
        else:
            x = f"{hf}block_sparse_moe.experts.{e}."
            yield ours + "w13.weight", lambda x=x: torch.cat(
                [reader.get(x + "w1.weight"), reader.get(x + "w3.weight")])
            yield ours + "w2.weight", lambda x=x: reader.get(x + "w2.weight")


def load_model(path: Path, dtype: torch.dtype | None = None,
               device: torch.device | str = "cpu") -> Transformer:
    """Build a Transformer from `path` (config.json + safetensors); dtype None = checkpoint's.

    The skeleton is built on the meta device and each parameter is read from its file onto
    `device` (one tensor at a time: no full copy of the model is made on the host)."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: missing config.json")
    args = args_from_config(json.loads(config_file.read_text()), path)
    device = torch.device(device)
    reader = _Reader(_tensor_files(path), device)
    with torch.device("meta"):
        model = Transformer(args)
    params = dict(model.named_parameters())
    for name, load in _hf_names(args, reader):
        value = load()
        expected = params[name].shape
        if value.shape != expected:
            raise CheckpointError(f"{path}: tensor for {name} has shape {tuple(value.shape)}, "
                                  f"config.json implies {tuple(expected)}")
        _set_param(model, name, value.to(dtype or value.dtype))
    unused = sorted(n for n in set(reader.files) - reader.used if "rotary_emb" not in n)
    if unused:
        raise CheckpointError(f"{path}: unexpected tensors (naming not understood): {unused[:5]}")
    _materialize_buffers(model, device)
    return model.eval()


def _materialize_buffers(model: Transformer, device: torch.device) -> None:
    """Buffers were created on the meta device with the skeleton: compute them for real. The
    rope tables are computed in fp32 on the host (the same values on every device) and kept
    in the weights' dtype, in which transformers applies them too."""
    dtype = model.tok_embeddings.weight.dtype
    model.rope_cos, model.rope_sin = (t.to(device, dtype) for t in rope_cache(model.args))
    for module in model.modules():
        if isinstance(module, MoeFeedForward):
            module.routed_tokens = torch.zeros(len(module.experts), dtype=torch.int64,
                                               device=device)


def _set_param(model: torch.nn.Module, name: str, value: Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(module, attr, torch.nn.Parameter(value.contiguous(), requires_grad=False))


# ---------------------------------------------------------------- writing


def hf_state_dict(model: Transformer) -> dict[str, Tensor]:
    """Our parameters under HF names (per-expert Mixtral naming, as save_pretrained writes)."""
    args, sd = model.args, model.state_dict()
    out = {"model.embed_tokens.weight": sd["tok_embeddings.weight"],
           "model.norm.weight": sd["norm.weight"]}
    if not args.tie_embeddings:
        out["lm_head.weight"] = sd["output.weight"]
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    for i in range(args.n_layers):
        hf, ours = f"model.layers.{i}.", f"layers.{i}."
        wq, wk, wv = sd[ours + "attention.wqkv.weight"].split([q, kv, kv])
        out |= {hf + "self_attn.q_proj.weight": wq, hf + "self_attn.k_proj.weight": wk,
                hf + "self_attn.v_proj.weight": wv,
                hf + "self_attn.o_proj.weight": sd[ours + "attention.wo.weight"],
                hf + "input_layernorm.weight": sd[ours + "attention_norm.weight"],
                hf + "post_attention_layernorm.weight": sd[ours + "ffn_norm.weight"]}
        ff = ours + "feed_forward."
        if args.moe is None:
            gate, up = sd[ff + "w13.weight"].chunk(2)
            out |= {hf + "mlp.gate_proj.weight": gate, hf + "mlp.up_proj.weight": up,
                    hf + "mlp.down_proj.weight": sd[ff + "w2.weight"]}
            continue
        out[hf + "block_sparse_moe.gate.weight"] = sd[ff + "gate.weight"]
        for e in range(args.moe.num_experts):
            x = f"{hf}block_sparse_moe.experts.{e}."
            w1, w3 = sd[f"{ff}experts.{e}.w13.weight"].chunk(2)
            out |= {x + "w1.weight": w1, x + "w3.weight": w3,
                    x + "w2.weight": sd[f"{ff}experts.{e}.w2.weight"]}
    return {k: v.contiguous() for k, v in out.items()}


def write_checkpoint(path: Path, args: ModelArgs, *, seed: int = 0,
                     max_shard_bytes: int | None = None,
                     dtype: torch.dtype = torch.float32) -> Path:
    """Write a seeded model as config.json + safetensors in `dtype` (sharded with an index if
    asked) + a byte-level BPE tokenizer.json + tokenizer_config.json with a chat template."""
    path.mkdir(parents=True, exist_ok=True)
    model = Transformer(args)
    init_weights(model, seed)
    tensors = {name: t.to(dtype) for name, t in hf_state_dict(model).items()}
    config = config_from_args(args) | {"torch_dtype": str(dtype).removeprefix("torch.")}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    _save_tensors(path, tensors, max_shard_bytes)
    build_byte_bpe(min(args.vocab_size, 512)).save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "chat_template": DEFAULT_CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast"},
        indent=2))
    return path


def _save_tensors(path: Path, tensors: dict[str, Tensor], max_shard_bytes: int | None) -> None:
    if max_shard_bytes is None:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        return
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name in sorted(tensors, key=_natural_key):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(shard, file)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _natural_key(name: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
