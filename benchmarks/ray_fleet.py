"""`ctrt bench --ray`, the fleet's experiments (benchmarks/ray_serve.py runs them):
- many streams moving at once: two `ctrt serve` on one Redis store; N streams held by one are
  all asked of the other at the same moment (one append each, concurrently): seconds until
  every one has answered; and crossed, each server taking N of the other's streams at the
  same moment (2N appends): seconds until all have answered. N in `moving`.
- failover with N streams: on the Ray cluster, the replica holding N streams is killed and
  each stream's appends are retried at once, concurrently, until answered: seconds from the
  kill until every stream answers again.
- the fence's cost: the same engine on the same Redis served twice in this process (ASGI
  calls through Starlette's TestClient, no HTTP), fenced (as `ctrt serve` always is on a
  shared store: a GET of a stream and a generation's first step read its version in Redis
  first) and unfenced (UnfencedOwnership below, which exists for this measurement only: the
  resident copy answers with no store read, as before fenced reads); p50 and p99 of a GET
  and of a one-token generation (one decode step), contenders interleaved per repeat.
  Targets: the fence adds at most 1 ms to a GET's p50 and 5% to a decode step's p50.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from compressive_rt.benchmarks.launchers.redis_server import RedisServer
from compressive_rt.benchmarks.launchers.server_process import ServerProcess
from compressive_rt.benchmarks.settings import BenchError, log
from compressive_rt.benchmarks.workloads import interleave
from compressive_rt.serving.ownership import SharedOwnership

TIMEOUT_S = 300
GET_ADDED_MS_TARGET, STEP_RATIO_TARGET = 1.0, 1.05


# ---- many streams moving at once --------------------------------------------------------------
async def _appends(pairs: list[tuple[str, str]], text: str) -> float:
    """Seconds until every (server url, stream) pair's append, all sent at once, has answered."""
    limits = httpx.Limits(max_connections=len(pairs) + 4)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits) as client:
        async def one(url: str, stream: str) -> None:
            answer = await client.post(f"{url}/v1/streams/{stream}/append", json={"text": text})
            if answer.status_code != 200:
                raise BenchError(f"an append answered {answer.status_code}: {answer.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(one(url, stream) for url, stream in pairs))
        return time.perf_counter() - started


def _held_by(url: str, count: int, history: str) -> list[str]:
    """`count` new streams, each with `history` appended on the server at `url` (which holds
    them after)."""
    streams = [httpx.post(f"{url}/v1/streams", timeout=TIMEOUT_S).json()["id"]
               for _ in range(count)]
    asyncio.run(_appends([(url, stream) for stream in streams], history))
    return streams


def moving_streams(engine_dir: Path, counts: tuple[int, ...], history: int, threads: int,
                   work: Path) -> dict:
    redis_server = RedisServer(work / "redis_moving").start()
    text = "abcdefghijklmnopqrstuvwxyz "[:27] * (history // 27 + 1)
    rows = {}
    try:
        servers = [ServerProcess(engine_dir, work / name, "--store", redis_server.url,
                                 "--streams", str(max(counts)), "--no-access-log",
                                 threads=threads) for name in ("moving_a", "moving_b")]
        with servers[0] as a, servers[1] as b:
            for count in counts:
                one_way = _held_by(a.url, count, text[:history])
                seconds = asyncio.run(_appends([(b.url, s) for s in one_way], "move"))
                mine, theirs = (_held_by(a.url, count, text[:history]),
                                _held_by(b.url, count, text[:history]))
                crossed = asyncio.run(_appends([(b.url, s) for s in mine]
                                               + [(a.url, s) for s in theirs], "cross"))
                rows[str(count)] = {"one_way_s": seconds, "crossed_s": crossed}
                log(f"ray bench moving {count} streams at once: {seconds:.2f} s one way, "
                    f"{crossed:.2f} s crossed ({count} each way)")
                for stream in one_way + mine + theirs:  # the next count starts with none
                    httpx.delete(f"{a.url}/v1/streams/{stream}", timeout=TIMEOUT_S)
    finally:
        redis_server.stop()
    return {"history_tokens": history, "streams": rows}


# ---- failover with many streams on a Ray cluster ----------------------------------------------
def streams_on_one_replica(url: str, count: int) -> tuple[str, list[str]]:
    """(a replica, `count` streams it holds): streams are made until one replica has
    answered `count` first appends (Serve picks the replica of each)."""
    by_replica: dict[str, list[str]] = {}
    with httpx.Client(timeout=TIMEOUT_S) as client:
        for _ in range(4 * count + 8):
            stream = client.post(f"{url}/v1/streams").json()["id"]
            answer = client.post(f"{url}/v1/streams/{stream}/append", json={"text": "held"})
            if answer.status_code != 200:
                raise BenchError(f"an append answered {answer.status_code}")
            held = by_replica.setdefault(answer.headers["x-ctrt-replica"], [])
            held.append(stream)
            if len(held) == count:
                return answer.headers["x-ctrt-replica"], held
    raise BenchError(f"no replica came to hold {count} streams in {4 * count + 8}")


async def _until_answered(url: str, streams: list[str]) -> list[float]:
    """Each stream's seconds until one of its appends (retried on 503) is answered."""
    limits = httpx.Limits(max_connections=len(streams) + 4)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits) as client:
        started = time.perf_counter()

        async def one(stream: str) -> float:
            for _ in range(10_000):
                answer = await client.post(f"{url}/v1/streams/{stream}/append",
                                           json={"text": "!"})
                if answer.status_code == 200:
                    return time.perf_counter() - started
                if answer.status_code != 503:
                    raise BenchError(f"after the kill an append answered {answer.status_code}")
                await asyncio.sleep(0.01)
            raise BenchError("a stream did not answer after 10,000 tries")

        return list(await asyncio.gather(*(one(stream) for stream in streams)))


def failover_many(url: str, kill: Callable[[str], None], restored: Callable[[], None],
                  counts: tuple[int, ...]) -> dict:
    """For each count: `kill(replica)` the replica holding that many streams, time until
    every stream answers again, then wait until `restored()` (Serve runs a replacement)."""
    rows = {}
    for count in counts:
        victim, streams = streams_on_one_replica(url, count)
        kill(victim)
        answered = asyncio.run(_until_answered(url, streams))
        rows[str(count)] = {"every_stream_s": max(answered),
                            "median_stream_s": float(np.median(answered))}
        log(f"ray bench failover of {count} streams: every one answers again "
            f"{max(answered):.2f} s after the kill (median {np.median(answered):.2f} s)")
        restored()
    return rows


def kill_replica(app: str, replica: str) -> None:
    import ray

    from compressive_rt.serving.ray_app import REPLICA

    ray.kill(ray.get_actor(f"SERVE_REPLICA::{app}#{REPLICA}#{replica}", namespace="serve"),
             no_restart=True)


def wait_for_replacement(serve, app: str) -> None:
    wait_for(lambda: running_replicas(serve, app) < 2, "Serve to see the death")
    wait_for(lambda: running_replicas(serve, app) == 2, "a replacement replica")


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"waited {TIMEOUT_S} s for {what}")
        time.sleep(0.05)


def running_replicas(serve, app: str) -> int:
    from compressive_rt.serving.ray_app import REPLICA

    status = serve.status().applications[app].deployments[REPLICA]
    return status.replica_states.get("RUNNING", 0)


# ---- the fence's cost -------------------------------------------------------------------------
class UnfencedOwnership(SharedOwnership):
    """A shared store's ownership without fenced reads (a resident copy answers a GET, a
    snapshot or a generation with no store read): for this benchmark's comparison only."""

    def check(self, stream_id: str) -> None:
        return None


def fence_cost(engine_dir: Path, reads: int, steps: int, repeats: int, threads: int,
               work: Path) -> dict:
    from starlette.testclient import TestClient

    redis_server = RedisServer(work / "redis_fence").start()
    clients = {}
    try:
        for name, ownership in (("fenced", SharedOwnership), ("unfenced", UnfencedOwnership)):
            clients[name] = TestClient(fence_app(engine_dir, redis_server.url, ownership,
                                                 threads, name))
            clients[name].__enter__()
        streams = {name: client.post("/v1/streams").json()["id"]
                   for name, client in clients.items()}
        for name, client in clients.items():
            client.post(f"/v1/streams/{streams[name]}/append", json={"text": "warm " * 20})

        def unit(name: str):
            client, stream = clients[name], streams[name]

            def run() -> dict:
                gets, decodes = [], []
                for _ in range(reads):
                    started = time.perf_counter()
                    answer = client.get(f"/v1/streams/{stream}")
                    gets.append(time.perf_counter() - started)
                    if answer.status_code != 200 or not answer.json()["resident"]:
                        raise BenchError(f"a GET answered {answer.status_code}: {answer.text}")
                for _ in range(steps):
                    started = time.perf_counter()
                    answer = client.post(f"/v1/streams/{stream}/generate",
                                         json={"max_tokens": 1, "temperature": 0})
                    decodes.append(time.perf_counter() - started)
                    if answer.status_code != 200:
                        raise BenchError(f"a generation answered {answer.status_code}")
                return {"get": gets, "decode": decodes}
            return run

        runs = interleave({name: unit(name) for name in clients}, repeats)
    finally:
        for client in clients.values():
            client.__exit__(None, None, None)
        redis_server.stop()
    return fence_figures(runs)


def fence_app(engine_dir: Path, store_url: str, ownership: type, threads: int, name: str):
    from compressive_rt.runtime.session import Session
    from compressive_rt.runtime.snapshot import most_snapshot_bytes
    from compressive_rt.serving.app import create_app
    from compressive_rt.serving.engine import Engine, row_specs
    from compressive_rt.serving.metrics import Metrics
    from compressive_rt.serving.namespaces import engine_namespace
    from compressive_rt.serving.redis_store import RedisStore
    from compressive_rt.serving.settings import ServeSettings

    settings = ServeSettings(streams=1, access_log=False)
    session = Session(engine_dir, max_streams=1, threads=threads)
    store = RedisStore(store_url, engine_namespace(session.manifest), name=name)
    metrics = Metrics(name)
    engine = Engine(session, store, settings, metrics, ownership(store))
    return create_app(engine, settings, metrics,
                      most_snapshot_bytes(session.manifest, row_specs(session)))


def fence_figures(runs: dict[str, list[dict]]) -> dict:
    rows = {}
    for name, repeats in runs.items():
        rows[name] = {}
        for kind in ("get", "decode"):
            seconds = np.asarray(sum((r[kind] for r in repeats), [])) * 1e3
            rows[name][f"{kind}_ms_p50"] = float(np.percentile(seconds, 50))
            rows[name][f"{kind}_ms_p99"] = float(np.percentile(seconds, 99))
    fenced, unfenced = rows["fenced"], rows["unfenced"]
    get_added = fenced["get_ms_p50"] - unfenced["get_ms_p50"]
    step_ratio = fenced["decode_ms_p50"] / unfenced["decode_ms_p50"]
    result = {"how": "the same engine and Redis served twice in-process (TestClient, no HTTP): "
                     "fenced, and unfenced (benchmarks/ray_fleet.UnfencedOwnership, a "
                     "bench-only ownership with no store read per read)",
              "contenders": rows, "get_p50_added_ms": get_added,
              "decode_step_p50_ratio": step_ratio,
              "targets": {
                  f"GET p50 + at most {GET_ADDED_MS_TARGET:g} ms":
                      "met" if get_added <= GET_ADDED_MS_TARGET else "missed",
                  f"decode step p50 + at most {STEP_RATIO_TARGET - 1:.0%}":
                      "met" if step_ratio <= STEP_RATIO_TARGET else "missed"}}
    log(f"ray bench fence: GET p50 {fenced['get_ms_p50']:.2f} vs {unfenced['get_ms_p50']:.2f} "
        f"ms (+{get_added:.2f} ms), decode step p50 {fenced['decode_ms_p50']:.2f} vs "
        f"{unfenced['decode_ms_p50']:.2f} ms ({step_ratio:.3f}x)")
    return result


def fleet_report(results: dict) -> list[str]:
    moving, failed = results["moving_streams"]["streams"], results["failover_streams"]
    lines = ["", "| streams moving at once | hand-over, s | crossed (as many each way), s | "
                 "failover on Ray, s |", "|---|---|---|---|"]
    for count, row in moving.items():
        lines.append(f"| {count} | {row['one_way_s']:.2f} | {row['crossed_s']:.2f} | "
                     f"{failed[count]['every_stream_s']:.2f} |")
    fence = results["fence"]
    fenced, unfenced = fence["contenders"]["fenced"], fence["contenders"]["unfenced"]
    lines.append(f"fenced reads: GET p50 {fenced['get_ms_p50']:.2f} ms (p99 "
                 f"{fenced['get_ms_p99']:.2f}) vs unfenced {unfenced['get_ms_p50']:.2f} (p99 "
                 f"{unfenced['get_ms_p99']:.2f}); decode step p50 {fenced['decode_ms_p50']:.2f} "
                 f"ms (p99 {fenced['decode_ms_p99']:.2f}) vs {unfenced['decode_ms_p50']:.2f} "
                 f"(p99 {unfenced['decode_ms_p99']:.2f}); targets: " + ", ".join(
                     f"{target}: {verdict}" for target, verdict in fence["targets"].items()))
    return lines
