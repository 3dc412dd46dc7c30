"""`ctrt bench --ray` smoke: the smallest profile runs end to end (Redis stores, two servers
moving a stream, a local Ray cluster with a failover and 1 vs 2 replicas), and its numbers are
sane: every store measured, a move writes at least the stream's snapshot to Redis's log, the
killed replica's stream answers again, both applications answer every completion."""

import json

import pytest
from support.rules import need_binary, need_ray

from compressive_rt.benchmarks.ray_serve import SMOKE, run_ray_benchmark

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    need_ray()
    need_binary("redis-server", "redis-server")
    out = tmp_path_factory.mktemp("ray_bench")
    return run_ray_benchmark(out, threads=1, profile="smoke"), out


def test_the_smoke_run_writes_ray_json_and_leaves_nothing(smoke):
    results, out = smoke
    assert json.loads((out / "ray.json").read_text())["profile"] == "smoke"
    assert not list(out.glob(".ray-*"))


def test_every_store_and_fsync_policy_is_measured(smoke):
    costs = smoke[0]["store_costs"]
    assert sorted(costs["stores"]) == ["redis appendfsync always", "redis appendfsync everysec",
                                       "redis appendfsync no", "sqlite synchronous=FULL"]
    assert all(row["append_ms"] > 0 and row["snapshot_put_ms"] > 0
               for row in costs["stores"].values())
    assert costs["always_vs_everysec"]["append"]["n"] == SMOKE.store_repeats


def test_a_move_writes_the_snapshot_to_the_append_only_file(smoke):
    move = smoke[0]["stream_move"]
    assert move["snapshot_bytes"] > move["state_bytes"] > 0
    assert move["aof_bytes_per_move"] >= move["snapshot_bytes"]
    assert move["move_vs_resident"]["n"] == SMOKE.moves


def test_failover_and_throughput_figures(smoke):
    results = smoke[0]
    assert results["failover"]["kills"] == SMOKE.failovers
    assert 0 < results["failover"]["to_answering_ms"] < 60_000
    assert results["failover"]["to_replacement_s"] > 0
    apps = results["throughput"]["apps"]
    assert sorted(apps) == ["1 replica", "2 replicas"]
    assert all(row["tokens_per_s"] > 0 for row in apps.values())
