"""The recall experiment (benchmarks/recall.py): the task, the reach arithmetic against the
model itself, and the quick pipeline's figures against the engine it kept."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from support.rules import fp32_bound

from compressive_rt.benchmarks.recall import (
    COMPRESSIVE,
    KEY_BASE,
    QUICK,
    QUICK_BASE,
    RECALL_BASE,
    TRANSFORMER_XL,
    VALUE_BASE,
    RecallTask,
    answer_scores,
    ascii_filler,
    default_distances,
    engine_logits,
    reaches,
    run_recall,
    variant_configs,
)
from compressive_rt.ct_reference.model import CompressiveTransformer
from compressive_rt.errors import CtrtError

TEXT = b"def f(x):\n    return x + 1  # the filler is real text\n" * 400
TEXT_TOKENS = np.frombuffer(TEXT, dtype=np.uint8)


def test_a_documents_first_query_is_its_distance_after_the_queried_value():
    task, filler = RecallTask(pairs=4, values=16), ascii_filler(TEXT_TOKENS)
    rng = np.random.default_rng(0)
    phases = set()
    for distance in (7, 8, 9, 30, 77):
        for _ in range(40):
            length = task.length(16, distance)
            doc, query = task.document(rng, filler, 16, distance, length)
            key, answer = int(doc[query]), int(doc[query + 1])
            assert KEY_BASE <= key < KEY_BASE + 4
            block = VALUE_BASE + (key - KEY_BASE) * 16
            assert block <= answer < block + 16
            written = np.flatnonzero(doc == key)
            assert len(written) == 2 and written[1] == query  # once in the pairs, once queried
            assert doc[written[0] + 1] == answer and query - (written[0] + 1) == distance
            assert (doc >= VALUE_BASE).sum() == 4 * 4  # every other byte is filler text
            # every key is queried once, each followed by its value
            tail = doc[query:query + 8].reshape(4, 2)
            assert sorted(tail[:, 0] - KEY_BASE) == [0, 1, 2, 3]
            phases.add(int(np.flatnonzero(doc >= VALUE_BASE)[0]))
    assert phases == set(range(16))  # the task starts at every offset of the segment grid


def test_a_distance_shorter_than_the_pairs_or_a_task_too_large_is_refused():
    task = RecallTask(pairs=4)
    with pytest.raises(CtrtError, match="distance 6 is shorter than the pairs allow"):
        task.document(np.random.default_rng(0), ascii_filler(TEXT_TOKENS), 16, 6, 64)
    with pytest.raises(CtrtError, match="must fit the 112 value bytes"):
        RecallTask(pairs=8, values=16)


def test_filler_holds_no_key_or_value_byte():
    filler = ascii_filler(np.frombuffer(TEXT + bytes(range(256)), dtype=np.uint8))
    assert filler.max() < VALUE_BASE and len(filler) == len(TEXT) + VALUE_BASE


def test_the_reaches_of_the_readme():
    assert reaches(RECALL_BASE) == {
        "raw_every_phase": 32, "raw_some_phase": 47, "direct_every_phase": 96,
        "direct_some_phase": 111, "temporal_range": 192, "range_some_phase": 207}
    assert reaches(variant_configs(RECALL_BASE)[TRANSFORMER_XL])["direct_every_phase"] == 48
    assert default_distances(RECALL_BASE, RecallTask()) == (16, 48, 80, 152, 223)


@pytest.mark.slow
@pytest.mark.parametrize("compress_fn, cmem_len", [("none", 0), ("mean_pool", 4)])
def test_a_one_layer_models_query_depends_on_a_byte_exactly_within_the_reach(compress_fn,
                                                                            cmem_len):
    """The arithmetic against the model: with one layer (no hops), changing the byte D back
    changes the query's logits iff D <= M + p (raw) or M + c*C + p (compressed)."""
    config = RECALL_BASE.replace(n_layers=1, d_model=32, n_heads=2, d_ff=64, seg_len=8,
                                 mem_len=8, cmem_len=cmem_len, compress_rate=2,
                                 compress_fn=compress_fn,
                                 aux_loss="none")
    torch.manual_seed(0)
    model = CompressiveTransformer(config).eval()
    reach = reaches(config)["direct_every_phase"] if cmem_len else config.mem_len
    base = torch.randint(0, 128, (1, 8 * 8))
    for phase in (0, 3, 7):
        query = 6 * 8 + phase
        for distance in range(reach - 2, reach + 10):
            changed = base.clone()
            changed[0, query - distance] = 200
            logits = [model.score(t[:, :query + 1])[0][0, query] for t in (base, changed)]
            depends = not torch.equal(*logits)
            assert depends == (distance <= reach + phase), (phase, distance)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("recall")
    lines = []
    results = run_recall(QUICK, out, QUICK_BASE, log=lines.append)
    return out, results, lines


@pytest.mark.slow
def test_the_quick_run_writes_its_table_json_plot_engines_and_prompt(quick_run):
    out, results, lines = quick_run
    assert json.loads((out / "recall.json").read_text()) == json.loads(json.dumps(results))
    assert (out / "recall.png").stat().st_size > 10_000
    assert sorted(p.name for p in (out / "engines").iterdir()) == sorted(results["models"])
    assert results["tokens_per_run"] == QUICK.steps * QUICK.batch * QUICK_BASE.seg_len
    assert "conv+attention, cmem masked" in lines[-2]
    example = results["example"]
    prompt = (out / "prompt.bin").read_bytes()
    assert prompt[-1] == example["key"] and KEY_BASE <= example["key"] < KEY_BASE + 4


@pytest.mark.slow
def test_the_quick_runs_figures_are_the_kept_engines_outputs(quick_run):
    """Recomputed here through each kept engine: the same argmax answers, accuracy and answer
    bits as recall.json; eager equals the engine under the fp32 rule."""
    out, results, _ = quick_run
    from compressive_rt.benchmarks.recall import evaluation_documents
    from compressive_rt.ct_reference.data import read_documents, split_documents

    held_out = ascii_filler(split_documents(read_documents(None))[1])
    for name, model in results["models"].items():
        for distance, row in model["runs"][0]["distances"].items():
            docs, queries = evaluation_documents(QUICK, QUICK_BASE.seg_len, held_out,
                                                 int(distance))
            again = answer_scores(engine_logits(out / "engines" / name, docs), docs, queries)
            assert again == row["engine"]
            assert again["argmax"] == row["eager"]["argmax"]
            assert abs(again["answer_bits"] - row["eager"]["answer_bits"]) <= fp32_bound(
                row["eager"]["answer_bits"])
    assert results["engine_vs_eager"]["within_1e-4"]


@pytest.mark.slow
def test_masking_the_compressed_memory_changes_the_answers_beyond_the_fifo_memory(quick_run):
    _, results, _ = quick_run
    beyond = [d for d in results["settings"]["distances"]
              if d > reaches(QUICK_BASE)["raw_some_phase"]]
    assert beyond
    for distance in beyond:
        row = results["models"][COMPRESSIVE]["runs"][0]["distances"][str(distance)]
        assert row["masked"]["answer_bits"] != row["eager"]["answer_bits"]


@pytest.mark.slow
def test_ctrt_bench_recall_with_a_bad_setting_is_exit_2_and_one_error_line(tmp_path):
    for extra, message in ((["--steps", "0"], "error: --steps, --seeds and the batch must be "
                                              ">= 1, got 0"),
                           (["--distances", "3,40"], "error: distances must be >= 7 for 4 pairs"),
                           (["--jobs", "0"], "error: --jobs must be >= 1, got 0"),
                           (["--distances", "x"], "argument --distances: expected "
                                                  "comma-separated integers")):
        result = subprocess.run([sys.executable, "-m", "compressive_rt.cli.main", "bench",
                                 "--recall", "--quick", *extra, "--out", str(tmp_path)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr
    assert not (tmp_path / "recall").exists()
