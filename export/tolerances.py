"""The one tolerance table: `ctrt export` verification, benchmarks/gpu_check.py and
tests/test_gpu.py all judge an engine against the fp32 eager model by these numbers.

Logits: max |logit error| <= RELATIVE_TOLERANCE[precision] * max(1, max |logit|) (docs/DESIGN.md's
equality rule for fp32). Bits per byte: |bpb(engine) - bpb(eager)| over the same text, in
bits, <= BITS_PER_BYTE_TOLERANCE[precision]: what a user of `ctrt score` would see change.
fp32 has no bits-per-byte rule of its own: its logit rule is the contract, and a model with a
large logit scale (imported checkpoints reach ~3000) moves bits per byte by ~4e-4 within it.
"""

from __future__ import annotations

# int8: ONNX Runtime dynamic quantization of the MatMul weights (CPU engines).
RELATIVE_TOLERANCE = {"fp32": 1e-4, "fp16": 3e-2, "int8": 1e-1}
BITS_PER_BYTE_TOLERANCE = {"fp16": 1e-2, "int8": 2e-2}
# fp32 graphs run by a provider that keeps TensorRT's default TF32 GEMMs (the ONNX Runtime
# TensorRT execution provider has no switch for them): ~10 mantissa bits per product.
TF32_RELATIVE_TOLERANCE = 1e-3
