"""The torch inference engine: dense and MoE decoders, quantization, KV cache, continuous batching.

The model server imports `Engine`, `SamplingParams`, `TokenDelta` and `Quantization` from here.
"""

from .checkpoint import CheckpointError, hf_snapshot_dir, resolve_source, write_checkpoint
from .engine import Engine
from .model import ModelArgs, MoeArgs, Transformer
from .quantize import Quantization
from .sampling import SamplingParams
from .scheduler import TokenDelta

__all__ = [
    "CheckpointError",
    "Engine",
    "ModelArgs",
    "MoeArgs",
    "Quantization",
    "SamplingParams",
    "TokenDelta",
    "Transformer",
    "hf_snapshot_dir",
    "resolve_source",
    "write_checkpoint",
]
