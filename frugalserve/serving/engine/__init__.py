"""The torch inference engine: dense and MoE decoders, quantization, KV cache, continuous batching."""
