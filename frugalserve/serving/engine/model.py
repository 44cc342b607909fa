"""One decoder for Llama-style dense and Mixtral-style MoE checkpoints, with a slot-indexed
KV cache.

Used by the loader (which fills its weights) and the scheduler (which calls `forward` for prefill
and batched decode). Weight layouts are swapped for inference by `quantize.swap_linears`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class MoeArgs:
    """Mixture-of-experts feed-forward: `num_experts` SwiGLU experts, `top_k` chosen per token."""

    num_experts: int
    top_k: int


@dataclass(frozen=True)
class ModelArgs:
    """Shape of a decoder; field names follow gpt-fast, values come from a HF `config.json`."""

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    head_dim: int = 0  # 0 = dim // n_heads
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_ids: tuple[int, ...] = (2,)
    moe: MoeArgs | None = None

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of {self.n_kv_heads=}")

    @property
    def architecture(self) -> str:
        return "dense" if self.moe is None else "moe"

    @classmethod
    def from_name(cls, name: str) -> ModelArgs:
        if name not in PRESETS:
            raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
        return PRESETS[name]

    def with_(self, **changes: object) -> ModelArgs:
        return replace(self, **changes)  # type: ignore[arg-type]


_TINY = ModelArgs(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                  intermediate_size=192, max_seq_len=512)
PRESETS: dict[str, ModelArgs] = {
    # A few hundred thousand to a few million parameters: tests, demos, local mode.
    "tiny-dense": _TINY.with_(dim=128, n_layers=4, intermediate_size=384),
    "tiny-moe": _TINY.with_(dim=128, n_layers=3, intermediate_size=256, moe=MoeArgs(8, 2)),
    # Benchmark shapes (TESTING-NOTES): Llama-shaped ~58M params, Mixtral-shaped 8x top-2.
    "bench-dense": ModelArgs(vocab_size=32000, dim=512, n_layers=8, n_heads=8, n_kv_heads=4,
                             intermediate_size=1536, max_seq_len=1024),
    "bench-moe": ModelArgs(vocab_size=32000, dim=512, n_layers=8, n_heads=8, n_kv_heads=4,
                           intermediate_size=1024, max_seq_len=1024, moe=MoeArgs(8, 2)),
}


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 like transformers' LlamaRMSNorm."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:  # one fused kernel, bit-identical to the formula below
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cache(args: ModelArgs) -> tuple[Tensor, Tensor]:
    """cos and sin tables [max_seq_len, head_dim] (half-rotation layout of HF checkpoints)."""
    exponents = torch.arange(0, args.head_dim, 2).float() / args.head_dim  # [Dh/2]
    inv_freq = 1.0 / (args.rope_theta**exponents)
    freqs = torch.outer(torch.arange(args.max_seq_len).float(), inv_freq)  # [T, Dh/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [T, Dh]
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [B, H, T, Dh]; cos, sin: [B, 1, T, Dh]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


@dataclass
class Batch:
    """Where a forward pass reads and writes the cache: one row per request."""

    slots: Tensor  # [B] cache slot of each row
    input_pos: Tensor  # [B, T] absolute position of each token
    slot_range: tuple[int, int] | None  # (start, stop) when slots are consecutive: cache views
    length: int  # keys 0..length-1 are read from the cache (the highest position + 1)
    aligned: bool  # one query per row, all at position length-1: no mask needed

    @classmethod
    def make(cls, slots: list[int], input_pos: Tensor,
             device: torch.device | str = "cpu") -> Batch:
        """input_pos [B, T] on the host: length and alignment are read there, so a forward on
        an accelerator never waits for the device; then slots and positions move to `device`."""
        consecutive = slots == list(range(slots[0], slots[0] + len(slots)))
        rng = (slots[0], slots[0] + len(slots)) if consecutive else None
        length = int(input_pos.max()) + 1
        aligned = input_pos.shape[1] == 1 and bool((input_pos == length - 1).all())
        return cls(torch.tensor(slots, device=device), input_pos.to(device), rng, length, aligned)


class KVCache(nn.Module):
    """Pre-allocated keys and values for `max_batch` slots of `max_seq_len` tokens."""

    def __init__(self, max_batch: int, max_seq_len: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        shape = (max_batch, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device),
                             persistent=False)

    def update(self, batch: Batch, k: Tensor, v: Tensor, length: int) -> tuple[Tensor, Tensor]:
        """Write k, v [B, Hkv, T, Dh] at their positions; return the first `length` keys/values."""
        rows = batch.slots[:, None]  # [B, 1] broadcasts against input_pos [B, T]
        self.k[rows, :, batch.input_pos] = k.transpose(1, 2)  # [B, T, Hkv, Dh] by indexing rules
        self.v[rows, :, batch.input_pos] = v.transpose(1, 2)
        if batch.slot_range is not None:
            start, stop = batch.slot_range
            return self.k[start:stop, :, :length], self.v[start:stop, :, :length]
        return self.k[batch.slots, :, :length], self.v[batch.slots, :, :length]


def decode_attention(q: Tensor, keys: Tensor, values: Tensor,
                     mask: Tensor | None = None) -> Tensor:
    """One query per row over its keys (all of them, or those where mask [B, 1, 1, L] is
    True): q [B, H, 1, Dh], keys, values [B, Hkv, L, Dh] -> [B, H, 1, Dh]. Two small matmuls
    with the query heads of each kv head side by side (the grouping of SDPA's enable_gqa);
    SDPA's flash kernel costs ~50 us a call at this size."""
    B, H, _, Dh = q.shape
    Hkv = keys.shape[1]
    q = q.view(B, Hkv, H // Hkv, Dh)  # [B, H, 1, Dh] -> [B, Hkv, G, Dh]
    scores = (q @ keys.transpose(2, 3)) * Dh**-0.5  # [B, Hkv, G, L]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # mask broadcasts over Hkv and G
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)  # fp32 for bf16/fp16 models
    out = probs.to(values.dtype) @ values  # [B, Hkv, G, Dh]
    return out.view(B, H, 1, Dh)


class Attention(nn.Module):
    """Grouped-query self-attention with fused QKV projection and rotary positions."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        qkv_dim = (args.n_heads + 2 * args.n_kv_heads) * args.head_dim
        self.wqkv = nn.Linear(args.dim, qkv_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                batch: Batch, length: int) -> Tensor:
        B, T, _ = x.shape
        H, Hkv, Dh = self.n_heads, self.n_kv_heads, self.head_dim
        qk, v = self.wqkv(x).split([(H + Hkv) * Dh, Hkv * Dh], dim=-1)
        qk = apply_rope(qk.view(B, T, H + Hkv, Dh).transpose(1, 2), cos, sin)  # [B, H+Hkv, T, Dh]
        q, k = qk.split([H, Hkv], dim=1)  # one rotation for queries and keys together
        v = v.view(B, T, Hkv, Dh).transpose(1, 2)  # [B, T, Hkv*Dh] -> [B, Hkv, T, Dh]
        assert self.kv_cache is not None, "call Transformer.setup_cache first"
        keys, values = self.kv_cache.update(batch, k, v, length)  # [B, Hkv, L, Dh]
        if T == 1:  # decode
            out = decode_attention(q, keys, values, mask)
        else:
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
        out = out.transpose(1, 2).reshape(B, T, -1)  # [B, H, T, Dh] -> [B, T, H*Dh]
        return self.wo(out)


class FeedForward(nn.Module):
    """SwiGLU MLP with gate and up projections fused into one matrix `w13`."""

    def __init__(self, dim: int, intermediate_size: int) -> None:
        super().__init__()
        self.w13 = nn.Linear(dim, 2 * intermediate_size, bias=False)
        self.w2 = nn.Linear(intermediate_size, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class MoeFeedForward(nn.Module):
    """Top-k routed SwiGLU experts; each expert runs once per step on all tokens routed to it."""

    def __init__(self, dim: int, intermediate_size: int, moe: MoeArgs) -> None:
        super().__init__()
        self.top_k = moe.top_k
        self.gate = nn.Linear(dim, moe.num_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(dim, intermediate_size)
                                     for _ in range(moe.num_experts))
        self.register_buffer("routed_tokens", torch.zeros(moe.num_experts, dtype=torch.int64),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        flat = x.view(B * T, D)  # [B, T, D] -> [N, D]
        probs = F.softmax(self.gate(flat).float(), dim=-1)  # [N, E]
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)  # [N, K]: softmax over the chosen
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        assignments = chosen.flatten()  # [N*K] expert of each (token, choice)
        order = torch.argsort(assignments, stable=True)  # [N*K] assignments by expert
        counts = torch.bincount(assignments, minlength=len(self.experts))  # [E]
        self.routed_tokens += counts
        token_idx = order // self.top_k  # [N*K] token of each sorted assignment
        sorted_weights = weights.flatten()[order, None]  # [N*K, 1]
        out = torch.zeros_like(flat)
        start = 0
        # one matmul chain per expert that got tokens; sizing them reads the counts back (on a
        # GPU, one wait per MoE layer, as in transformers' Mixtral)
        for e, n in enumerate(counts.tolist()):
            if n:
                rows = token_idx[start:start + n]
                y = self.experts[e](flat[rows]) * sorted_weights[start:start + n]  # [n, D]
                out.index_add_(0, rows, y)  # in expert order, like transformers' Mixtral
                start += n
        return out.view(B, T, D)  # [N, D] -> [B, T, D]


class Block(nn.Module):
    """Pre-norm transformer block: attention then (dense or MoE) feed-forward."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention = Attention(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward: nn.Module = (
            FeedForward(args.dim, args.intermediate_size) if args.moe is None
            else MoeFeedForward(args.dim, args.intermediate_size, args.moe))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                batch: Batch, length: int) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, batch, length)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Embedding, blocks, final norm and output head; `forward` runs against the KV cache."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        cos, sin = rope_cache(args)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def device(self) -> torch.device:
        """Where the weights, the cache and every tensor of a forward pass live."""
        return self.rope_cos.device

    def setup_cache(self, max_batch: int, max_seq_len: int) -> None:
        if max_seq_len > self.args.max_seq_len:
            raise ValueError(f"{max_seq_len=} exceeds the model's {self.args.max_seq_len}")
        dtype = self.tok_embeddings.weight.dtype
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(max_batch, max_seq_len, self.args.n_kv_heads,
                                               self.args.head_dim, dtype, self.device)

    def forward(self, tokens: Tensor, batch: Batch, last_only: bool = False) -> Tensor:
        """tokens, batch.input_pos: [B, T] -> logits [B, T, V] (or [B, 1, V] when last_only)."""
        mask = None if batch.aligned else attention_mask(batch.input_pos, batch.length)
        return self.run(tokens, batch, batch.length, mask, last_only)

    def run(self, tokens: Tensor, batch: Batch, length: int, mask: Tensor | None,
            last_only: bool = False) -> Tensor:
        """`forward` with the cache length and mask given: no data-dependent Python, so
        torch.compile traces it whole (see decode.CompiledDecode)."""
        cos = self.rope_cos[batch.input_pos].unsqueeze(1)  # [B, T, Dh] -> [B, 1, T, Dh]
        sin = self.rope_sin[batch.input_pos].unsqueeze(1)
        x = self.tok_embeddings(tokens)  # [B, T, D]
        for layer in self.layers:
            x = layer(x, cos, sin, mask, batch, length)
        if last_only:
            x = x[:, -1:]  # [B, T, D] -> [B, 1, D]
        return self.output(self.norm(x)).float()


def attention_mask(input_pos: Tensor, length: int) -> Tensor:
    """Causal mask [B, 1, T, L] over cached keys, built where input_pos [B, T] lives."""
    keys = torch.arange(length, device=input_pos.device)
    return (keys[None, None, :] <= input_pos[:, :, None]).unsqueeze(1)


def init_weights(model: Transformer, seed: int) -> None:
    """Seeded weights scaled so activations keep unit size (peaked logits, stable argmax)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if name.endswith("norm.weight"):
            p.data = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
        elif p.dim() == 2:
            p.data = torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1])
    model.tok_embeddings.weight.data *= math.sqrt(model.args.dim)
