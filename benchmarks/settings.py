"""What a benchmark run measures and how often: the profiles, the seed, the user-error type."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from compressive_rt.errors import CtrtError

SEED = 0


class BenchError(CtrtError):
    """A `ctrt bench` request that cannot run (bad option, missing package); says what to fix."""


@dataclass(frozen=True)
class Settings:
    config: dict = field(default_factory=dict)  # ModelConfig overrides of the default config
    segment_batches: tuple[int, ...] = (1, 4, 8)
    decode_batches: tuple[int, ...] = (1, 8)
    compile_batches: tuple[int, ...] = (1, 8)
    segment_repeats: int = 7  # interleaved repeats at batch 1 (5 above batch 2)
    decode_tokens: int = 16  # consecutive tokens per cycle, the last one commits
    decode_cycles: int = 3  # interleaved repeats of the decode workload
    nocache_positions: int = 8  # partial-segment positions timed for eager without cache
    compile_budget_s: float = 240.0  # per torch.compile call; beyond it the contender is skipped
    lucidrains_batches: tuple[int, ...] = (1, 8)  # segment batches of the imported-model run
    serving_concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    serving_new_tokens: int = 32  # generated tokens per request
    serving_prompt_bytes: int = 16
    serving_repeats: int = 2
    scheduler_steps: int = 384  # timed steps of the scheduler-overhead row (3 commits at L=128)
    capacity_streams: int = 32
    capacity_repeats: int = 20
    scaling_layers: int = 2  # the grid's models: per-layer cost does not depend on N
    scaling_mem: tuple[int, ...] = (128, 256, 512)
    scaling_cmem: tuple[int, ...] = (32, 64, 128)
    scaling_seg: tuple[int, ...] = (32, 64, 128)
    scaling_batches: tuple[int, ...] = (1, 2, 4, 8)
    xl_seg_len: int = 64  # M + C must be a multiple of L for the same-span Transformer-XL
    variant_repeats: int = 5
    quant_text_bytes: int = 16384
    quant_streams: int = 8


FULL = Settings()
QUICK = Settings(
    config=dict(n_layers=2, d_model=256, n_heads=4, d_ff=1024, seg_len=64, mem_len=64,
                cmem_len=32),
    segment_batches=(1, 4, 8), segment_repeats=5, decode_tokens=12, decode_cycles=3,
    nocache_positions=4, compile_budget_s=60.0, lucidrains_batches=(1, 8),
    serving_new_tokens=16, serving_repeats=2, scheduler_steps=192, capacity_repeats=12,
    scaling_layers=1, scaling_mem=(64, 128), scaling_cmem=(16, 32), scaling_seg=(32, 64),
    scaling_batches=(1, 8), xl_seg_len=32, variant_repeats=3, quant_text_bytes=2048,
    quant_streams=4)
SMOKE = Settings(
    config=dict(n_layers=1, d_model=64, n_heads=2, d_ff=128, seg_len=16, mem_len=16,
                cmem_len=8, compress_rate=2),
    segment_batches=(1, 2), decode_batches=(1, 2), compile_batches=(1,), segment_repeats=3,
    decode_tokens=4, decode_cycles=2, nocache_positions=2, compile_budget_s=45.0,
    lucidrains_batches=(1,), serving_concurrency=(1, 2, 4),
    serving_new_tokens=4, serving_prompt_bytes=8, serving_repeats=1, scheduler_steps=20,
    capacity_streams=8,
    capacity_repeats=4, scaling_layers=1, scaling_mem=(16, 32), scaling_cmem=(8,),
    scaling_seg=(16,), scaling_batches=(1, 2), xl_seg_len=8, variant_repeats=2,
    quant_text_bytes=512, quant_streams=2)
PROFILES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
