"""Inference weight layouts chosen by an explicit enum: fp (oneDNN-packed), int8, int4.

`swap_linears` replaces every `nn.Linear` of a loaded model (except MoE routers) in place;
the loader calls it once after the weights are in. On the CPU the layers use torch's fused
kernels; on a GPU fp weights stay `nn.Linear` (cuBLAS) and quantized ones are dequantized to
bf16 before each matmul.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum

import torch
from torch import Tensor, nn


class Quantization(StrEnum):
    """Weight-only quantization of the linear layers."""

    NONE = "none"
    INT8 = "int8"  # symmetric, one scale per output channel
    INT4 = "int4"  # asymmetric, one scale and zero per group of input channels


class TransposedLinear(nn.Module):
    """y = x @ W^T with W^T stored contiguous [in, out]: ~1.4x faster than F.linear at batch 1."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight_t


class _Bf16KernelLinear(nn.Module, ABC):
    """Shared forward of the quantized layouts, in bf16 activations (x [..., in] is cast to
    bf16 and the result back): a fused CPU kernel (`_mm`, [N, in] -> [N, out]) when `fused`,
    else a bf16 matmul with the weights dequantized (`_dequantized`, [out, in]) on the fly."""

    fused: bool

    @abstractmethod
    def _mm(self, x2: Tensor) -> Tensor: ...

    @abstractmethod
    def _dequantized(self) -> Tensor: ...

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)  # [..., in] -> [N, in]
        y = self._mm(x2) if self.fused else x2 @ self._dequantized().t()  # [N, out]
        return y.to(x.dtype).view(*shape[:-1], -1)  # [N, out] -> [..., out]


class Int8Linear(_Bf16KernelLinear):
    """int8 weights [out, in], per-output-channel scales; on the CPU the dequant is fused in
    `_weight_int8pack_mm` (fast with bf16 activations, ~15x slower with fp32 ones).

    fused: use the CPU kernel (default: when the weights are on the CPU, where it exists)."""

    def __init__(self, linear: nn.Linear, fused: bool | None = None) -> None:
        super().__init__()
        self.fused = linear.weight.is_cpu if fused is None else fused
        w = linear.weight.detach().float()  # [out, in]
        scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # [out]
        q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight", q)
        self.register_buffer("scales", scales.to(torch.bfloat16))

    def _mm(self, x2: Tensor) -> Tensor:
        return torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scales)

    def _dequantized(self) -> Tensor:
        return self.weight.to(torch.bfloat16) * self.scales[:, None]  # [out, in]


class Int4Linear(_Bf16KernelLinear):
    """4-bit weights, groups of `group_size` inputs each with scale and zero (gpt-fast scheme);
    on the CPU the dequant is fused in `_weight_int4pack_mm_for_cpu` (bf16 activations), which
    takes its own packed layout; elsewhere two inputs share a byte (low nibble first).

    fused: use the CPU kernel (default: when the weights are on the CPU, where it exists)."""

    def __init__(self, linear: nn.Linear, group_size: int, fused: bool | None = None) -> None:
        super().__init__()
        self.fused = linear.weight.is_cpu if fused is None else fused
        w = linear.weight.detach().float()  # [out, in]
        out_f, in_f = w.shape
        if in_f % group_size:
            raise ValueError(f"int4 needs in_features ({in_f}) divisible by group {group_size}")
        groups = w.view(out_f, in_f // group_size, group_size)  # [out, in] -> [out, G, g]
        lo, hi = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        scale = (hi - lo).clamp(min=1e-8) / 15.0  # [out, G, 1]
        q = torch.round((groups - lo) / scale).clamp(0, 15).view(out_f, in_f)
        zero = lo + 8.0 * scale  # dequant: (q - 8) * scale + zero
        self.group_size = group_size
        scales_zeros = torch.cat([scale, zero], dim=-1)  # [out, G, 2]
        if self.fused:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                q.to(torch.int32), 1)  # [out, in] -> [out, in/2] uint8, the kernel's layout
            scales_zeros = scales_zeros.transpose(0, 1)  # [out, G, 2] -> [G, out, 2]
        else:
            q8 = q.to(torch.uint8)
            packed = q8[:, 0::2] | (q8[:, 1::2] << 4)  # [out, in] -> [out, in/2]
        self.register_buffer("weight", packed)
        self.register_buffer("scales_zeros", scales_zeros.contiguous().to(torch.bfloat16))

    def _mm(self, x2: Tensor) -> Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight, self.group_size,
                                                          self.scales_zeros)

    def _dequantized(self) -> Tensor:
        out_f = self.weight.shape[0]
        q = torch.stack([self.weight & 15, self.weight >> 4], dim=-1)  # [out, in/2, 2]
        groups = q.view(out_f, -1, self.group_size).to(torch.bfloat16)  # [out, G, g]
        scale, zero = self.scales_zeros[..., :1], self.scales_zeros[..., 1:]  # [out, G, 1]
        return ((groups - 8) * scale + zero).view(out_f, -1)  # [out, G, g] -> [out, in]


class PackedLinear(nn.Module):
    """y = x @ W^T with W reordered once into oneDNN's blocked layout (fp32 or bf16).

    On this AMD CPU torch's fp32 `mm` goes to MKL without AVX-512; oneDNN uses it. Packed for
    16 rows, a batch-16 decode step runs ~1.7x faster than with the transposed layout; at one
    row the call overhead (~15 us) and a slower GEMV make it ~20% slower, so engines with a
    single slot keep `TransposedLinear`. The math is the same fp32 (or bf16) product.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()  # [out, in]
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(w, PACK_ROWS),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [None], "")


PACK_ROWS = 16  # the batch size oneDNN's weight layout is tuned for


def _make(linear: nn.Linear, quantization: Quantization, group_size: int,
          max_batch: int) -> nn.Module:
    if quantization is Quantization.INT8:
        return Int8Linear(linear)
    if quantization is Quantization.INT4:
        return Int4Linear(linear, group_size)
    if not linear.weight.is_cpu:
        return linear  # cuBLAS reads the checkpoint's [out, in] layout as it is
    packable = torch.backends.mkldnn.is_available() and linear.weight.dtype in (
        torch.float32, torch.bfloat16)
    return PackedLinear(linear) if packable and max_batch > 1 else TransposedLinear(linear)


def swap_linears(model: nn.Module, quantization: Quantization | str, group_size: int = 32,
                 max_batch: int = 1) -> nn.Module:
    """Replace each nn.Linear (routers named `gate` stay exact) by the chosen inference layout.

    Unquantized weights on the CPU are laid out for the batch the engine runs: pre-transposed
    for one slot (memory-bound GEMV), oneDNN-packed for several (compute-bound GEMM)."""
    quantization = Quantization(quantization)
    if group_size not in (32, 64):
        raise ValueError(f"int4 group_size must be 32 or 64, got {group_size}")
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear) and name != "gate":
            setattr(model, name, _make(child, quantization, group_size, max_batch))
        else:
            swap_linears(child, quantization, group_size, max_batch)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and persistent buffers (the KV cache is not counted)."""
    tensors = list(model.parameters()) + [b for n, b in model.named_buffers()
                                          if not n.endswith((".k", ".v", "rope_cos", "rope_sin",
                                                             "routed_tokens"))]
    return sum(t.numel() * t.element_size() for t in tensors)


def decode_bytes_per_token(model: nn.Module) -> int:
    """Weight bytes read by one decode step at batch 1: everything but the embedding table
    (one row of it is read) — the numerator of the memory-bandwidth floor."""
    emb = model.get_submodule("tok_embeddings").weight
    return weight_bytes(model) - emb.numel() * emb.element_size()


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' (or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]
