"""`ctrt bench --serve` smoke: the smallest profile runs end to end on loopback, its numbers are
sane, the long-lived stream's state is constant and resumes exactly, the burst answers every
request with 200 or 429 and the completed ones are correct."""

import json

import pytest

from compressive_rt.benchmarks.serve import run_serve_benchmark

pytestmark = [pytest.mark.serving, pytest.mark.slow]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve_bench")
    return run_serve_benchmark(out, threads=1, profile="smoke"), out


def test_the_smoke_run_writes_serve_json(smoke):
    results, out = smoke
    assert json.loads((out / "serve.json").read_text())["profile"] == "smoke"
    assert not list(out.glob(".serve-*"))  # the engine and stores were temporary


def test_both_contenders_generate_every_token_at_each_concurrency(smoke):
    results, _ = smoke
    assert [row["clients"] for row in results["concurrency"]] == [1, 4]
    for row in results["concurrency"]:
        for key in ("http", "in_process"):
            assert row[key]["tokens_per_s"] > 0
            assert row[key]["ttft"]["p50_ms"] > 0
        assert row["http_vs_in_process"]["n"] == 1


def test_the_long_lived_stream_is_constant_and_resumes_exactly(smoke):
    rows = smoke[0]["long_lived"]
    assert len({row["state_bytes"] for row in rows}) == 1
    sizes = [row["snapshot_bytes"] for row in rows]
    assert max(sizes) - min(sizes) <= 8  # only the digits of the position in its JSON record
    assert rows[1]["full_attention_kv_cache_bytes"] > rows[0]["full_attention_kv_cache_bytes"]
    assert all(row["resumed_logits_max_abs_diff"] == 0 for row in rows)


def test_the_burst_gets_only_200_and_429_and_correct_answers(smoke):
    burst = smoke[0]["burst"]
    assert burst["no_5xx_no_hang"] and burst["completed_wrong"] == 0
    assert sum(burst["statuses"].values()) == burst["requests"] == 8
    assert burst["statuses"].get("429", 0) >= 1 and burst["statuses"].get("200", 0) >= 1


def test_the_abuse_section_measures_the_client_and_the_server_in_each_scenario(smoke):
    rows = smoke[0]["abuse"]
    assert [row["scenario"] for row in rows] == [
        "quiet", "50 half-open connections", "10 withheld 1.0 MB uploads", "200 stream creates",
        "2 uploads of a 20000-entry zip (0.9 MB)"]
    assert all(row["itl_p99_ms"] > 0 and row["rss_peak_bytes"] > 0 and row["fds_peak"] > 0
               for row in rows)
    assert rows[1]["opened"] == 50 and rows[2]["opened"] == 10
    assert rows[3]["statuses"] == {"200": 200} and rows[4]["statuses"] == {"400": 2}
    assert rows[1]["fds_peak"] >= 50  # the half-open connections were held while measured
