"""`ctrt bench` smoke test: the smallest profile runs end to end and reports sane numbers."""

import json
import math

import pytest

from benchmarks.bench import CONTENDERS, run_benchmark
from benchmarks.measure import segment_flops, step_flops


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    results = run_benchmark(quick=True, out_dir=out, threads=2, checkpoint=None,
                            profile="smoke", extras=False)
    return results, out


def test_smoke_benchmark_writes_json_and_png(smoke):
    results, out = smoke
    assert json.loads((out / "bench.json").read_text())["profile"] == "smoke"
    assert (out / "bench.png").stat().st_size > 10_000


def test_every_contender_reports_positive_latencies(smoke):
    results, _ = smoke
    assert set(results["contenders"]) == set(CONTENDERS)
    for key, res in results["contenders"].items():
        if key == "compile" and "error" in res:
            continue  # torch.compile may fail on a machine without a compiler; reported as text
        expected = ("1",) if key == "compile" else ("1", "2")  # compile: batch 1 only in smoke
        assert set(res["segment"]) == set(expected)
        for batch in expected:
            row = res["segment"][batch]
            assert _positive(row["median_ms"]) and row["p10_ms"] <= row["p90_ms"]
            assert _positive(row["tokens_per_s"]) and _positive(row["gflops"])
        assert _positive(res["first_segment"]["median_ms"])
        if key != "compile":
            assert _positive(res["decode"]["1"]["amortized_ms"])


def test_machine_limits_and_engine_check_are_sane(smoke):
    results, _ = smoke
    assert 0.5 < results["machine"]["gemm"]["gflops"] < 100_000
    assert results["machine"]["memory"]["copy_gbps"] > 0.1
    assert results["check"]["max_abs_logit_error"] < 1e-3
    assert 0 <= results["loop_overhead"]["decode b1"]["fraction"] < 1


def test_segment_flops_grow_linearly_with_batch_and_count_every_part():
    from ct_reference.config import ModelConfig

    cfg = ModelConfig()
    one, eight = segment_flops(cfg, 1), segment_flops(cfg, 8)
    assert eight["total"] == pytest.approx(8 * one["total"])
    # default config: 8.29 GFLOP per segment (ffn 4.29, projections 2.15, attention 1.01,
    # compression 0.81, logits 0.03); the foldable position table (1.34) is listed apart
    assert one["total"] == pytest.approx(8.288e9, rel=1e-3)
    assert one["parts"]["pos_table"] == pytest.approx(1.342e9, rel=1e-3)
    no_rotation = step_flops(cfg, 1, cfg.seg_len, 192, rotate=False)
    assert no_rotation["parts"]["compression"] == 0
