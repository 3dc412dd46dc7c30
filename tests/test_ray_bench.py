"""`ctrt bench --ray` smoke: the smallest profile runs end to end (Redis stores, two servers
moving a stream, then several at once and crossed, the fence's cost against no fence, a local
Ray cluster with failovers of one and of several streams and 1 vs 2 replicas), and its numbers
are sane: every store measured, a move writes at least the stream's snapshot to Redis's log,
the killed replica's streams answer again, both applications answer every completion."""

import json
from pathlib import Path

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
    left = [pid.name for pid in Path("/proc").iterdir() if pid.name.isdigit()
            and str(out).encode() in _command_line(pid)]
    assert not left, f"processes of the run still alive: {left}"


def _command_line(pid: Path) -> bytes:
    try:
        return (pid / "cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


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


def test_many_streams_moving_crossed_and_failing_over(smoke):
    results = smoke[0]
    counts = [str(count) for count in SMOKE.moving]
    moving = results["moving_streams"]["streams"]
    assert list(moving) == counts == list(results["failover_streams"])
    assert all(0 < row["one_way_s"] < 120 and 0 < row["crossed_s"] < 120
               for row in moving.values())
    assert all(0 < row["median_stream_s"] <= row["every_stream_s"] < 120
               for row in results["failover_streams"].values())


def test_the_fences_cost_is_measured_against_no_fence_with_its_targets(smoke):
    fence = smoke[0]["fence"]
    assert sorted(fence["contenders"]) == ["fenced", "unfenced"]
    for row in fence["contenders"].values():
        assert 0 < row["get_ms_p50"] <= row["get_ms_p99"]
        assert 0 < row["decode_ms_p50"] <= row["decode_ms_p99"]
    assert fence["get_p50_added_ms"] == pytest.approx(
        fence["contenders"]["fenced"]["get_ms_p50"] - fence["contenders"]["unfenced"]["get_ms_p50"])
    assert len(fence["targets"]) == 2 and set(fence["targets"].values()) <= {"met", "missed"}
