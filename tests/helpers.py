"""Shared test fixtures' data (tests/ is on sys.path under pytest's default import mode)."""

from compressive_rt.ct_reference.config import ModelConfig

# N=2, d=32, H=4, L=8, M=16, C=4, c=2: every behaviour shows within a few segments.
TINY = ModelConfig(vocab_size=256, n_layers=2, d_model=32, n_heads=4, d_ff=64, seg_len=8,
                   mem_len=16, cmem_len=4, compress_rate=2, compress_fn="mean_pool")
