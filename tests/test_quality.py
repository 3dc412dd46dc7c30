"""The quality experiment (benchmarks/quality.py), one tiny setting end to end."""

import json

import pytest
from support.engines import TINY

from compressive_rt.benchmarks.quality import (
    TRANSFORMER_XL,
    QualitySettings,
    run_quality,
    variant_config,
)
from compressive_rt.errors import CtrtError

BASE = TINY.replace(cmem_len=8)  # M + C = 24: three segments of 8 for the Transformer-XL
TEXT = "The compressive transformer keeps a memory and compresses the oldest of it. "


def test_transformer_xl_variant_has_the_compressive_models_attention_span():
    txl = variant_config(BASE, TRANSFORMER_XL)
    assert (txl.compress_fn, txl.cmem_len, txl.mem_len) == ("none", 0, 16 + 8)
    assert variant_config(BASE, "conv+autoencoding").aux_loss == "autoencoding"


def test_a_span_that_is_not_whole_segments_is_refused_with_a_cmem_len_that_works():
    with pytest.raises(CtrtError, match=r"M \+ C = 20 to be a multiple of seg_len=8.*"
                                        r"cmem_len=8"):
        variant_config(TINY, TRANSFORMER_XL)


def test_smoke_run_of_one_setting_writes_a_table_json_and_plot(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"doc{i}.txt").write_text(TEXT * (8 + 4 * i))
    settings = QualitySettings(steps=2, seeds=1, batch=2, val_segments=2, val_batch=1,
                               long_doc_segments=6)
    lines = []
    results = run_quality(settings, tmp_path / "out", base=BASE, data=str(corpus),
                          variants=("conv+attention", TRANSFORMER_XL), log=lines.append)
    assert list(results["variants"]) == ["conv+attention", TRANSFORMER_XL]
    assert results["verdict"]["our_order"] == ["conv+attention"]
    assert results["tokens_per_run"] == 2 * 2 * 8
    for row in results["variants"].values():
        assert 4.0 < row["val_bpb"]["mean"] < 9.0  # barely trained byte models
        assert row["runs"][0]["bytes"] == 6 * 8
    written = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert written["verdict"] == results["verdict"]
    assert (tmp_path / "out" / "quality.png").stat().st_size > 10_000
    assert "\nbeat Transformer-XL at equal span: " in "\n".join(lines)


def test_ctrt_bench_quality_with_no_steps_is_exit_2_and_one_error_line(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "compressive_rt.cli.main", "bench",
                             "--quality", "--steps", "0", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: --steps and --seeds must be >= 1, got 0 and 1")
    assert not (tmp_path / "quality").exists()
