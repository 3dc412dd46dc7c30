"""`ctrt bench --ray`: the shared store and the Ray Serve deployment, on loopback only.

Four experiments here and three in benchmarks/ray_fleet.py (many streams moving at once,
crossed hand-overs and failover with many streams; the fence's cost), every loop bounded in
count and time, every server on 127.0.0.1 and stopped at the end:
- store costs: the price of durability. A small log append and a snapshot put (the size of a
  snapshot of this engine) through serving.redis_store against redis-server with appendfsync
  always, everysec and no, and through serving.sqlite_store (synchronous=FULL), contenders
  interleaved per repeat; medians and p90.
- stream move: one stream handed between two servers on one Redis store (`ctrt serve --store
  redis://`, each what a Ray replica runs: one Session on the shared store, the same hand-over
  code; a Ray router cannot be told which replica to pick, two servers can): the time of an
  append that lands on the server not holding the stream (the holder spills, the taker takes
  and restores) beside an append on the holder, interleaved, and the bytes it moves (the
  snapshot) and writes to Redis's append-only file.
- failover: a local Ray cluster (ray.cluster_utils: a head and two nodes, one replica each);
  the replica holding a stream is killed, and the stream's appends are retried at once until
  one is answered: seconds from the kill to that answer; and until Serve runs a replacement.
- throughput: N concurrent streaming completions through the router of an application with 1
  replica and one with 2 replicas, side by side on the same cluster, interleaved per repeat.
  On this 2-core machine it is CPU-bound: a sanity figure, not a scaling measurement (that
  needs real nodes).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from compressive_rt.benchmarks.contenders import random_model
from compressive_rt.benchmarks.engines import export_engine
from compressive_rt.benchmarks.launchers.ray_cluster import RayCluster
from compressive_rt.benchmarks.launchers.redis_server import RedisServer
from compressive_rt.benchmarks.launchers.server_process import ServerProcess
from compressive_rt.benchmarks.measure import ratio_stats
from compressive_rt.benchmarks.ray_fleet import (
    failover_many,
    fence_cost,
    fleet_report,
    kill_replica,
    moving_streams,
    wait_for_replacement,
)
from compressive_rt.benchmarks.settings import SEED, BenchError, log
from compressive_rt.benchmarks.workloads import interleave
from compressive_rt.ct_reference.config import ModelConfig
from compressive_rt.runtime.session import Session
from compressive_rt.serving.namespaces import EngineNamespace, engine_namespace
from compressive_rt.serving.redis_store import RedisStore
from compressive_rt.serving.sqlite_store import SQLiteStore

TIMEOUT_S = 300
FSYNC_POLICIES = ("always", "everysec", "no")


@dataclass(frozen=True)
class RayBenchSettings:
    config: dict = field(default_factory=dict)  # ModelConfig overrides of the default config
    store_repeats: int = 5
    appends_per_repeat: int = 50
    append_bytes: int = 64
    snapshots_per_repeat: int = 3
    move_history: int = 1024  # tokens appended before the stream starts moving
    moves: int = 8
    failovers: int = 3
    clients: int = 8
    new_tokens: int = 32
    throughput_repeats: int = 3
    moving: tuple[int, ...] = (1, 8, 32)  # streams moving at once (hand-over, failover)
    moving_history: int = 64  # tokens each moving stream holds
    fence_reads: int = 50  # GETs per repeat and contender
    fence_steps: int = 20  # one-token generations per repeat and contender
    fence_repeats: int = 5


FULL = RayBenchSettings()
QUICK = RayBenchSettings(
    config=dict(n_layers=2, d_model=256, n_heads=4, d_ff=1024, seg_len=64, mem_len=64,
                cmem_len=32),
    store_repeats=3, moves=4, failovers=2, throughput_repeats=2, moving=(1, 8),
    fence_repeats=3)
SMOKE = RayBenchSettings(
    config=dict(n_layers=1, d_model=64, n_heads=2, d_ff=128, seg_len=16, mem_len=16,
                cmem_len=8, compress_rate=2),
    store_repeats=1, appends_per_repeat=5, snapshots_per_repeat=1, move_history=40, moves=2,
    failovers=1, clients=2, new_tokens=4, throughput_repeats=1, moving=(1, 2),
    moving_history=8, fence_reads=5, fence_steps=3, fence_repeats=1)
PROFILES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


# ---- store costs ------------------------------------------------------------------------------
def store_costs(identity: EngineNamespace, snapshot_bytes: int, settings: RayBenchSettings,
                work: Path) -> dict:
    servers = {policy: RedisServer(work / f"redis_{policy}", fsync=policy).start()
               for policy in FSYNC_POLICIES}
    stores = {f"redis appendfsync {policy}": RedisStore(server.url, identity)
              for policy, server in servers.items()}
    stores["sqlite synchronous=FULL"] = SQLiteStore(work / "sqlite", identity)
    payload = np.random.default_rng(SEED + 21).bytes(snapshot_bytes)
    try:
        versions = {}
        for name, store in stores.items():
            store.create("bench")
            versions[name] = store.take("bench").version
        position = dict.fromkeys(stores, 0)

        def unit(name: str):
            store, version = stores[name], versions[name]

            def run() -> dict:
                appends, puts = [], []
                for _ in range(settings.appends_per_repeat):
                    started = time.perf_counter()
                    store.append("bench", version, position[name], b"a" * settings.append_bytes)
                    appends.append(time.perf_counter() - started)
                    position[name] += settings.append_bytes
                for _ in range(settings.snapshots_per_repeat):
                    started = time.perf_counter()
                    store.put_snapshot("bench", version, position[name], payload)
                    puts.append(time.perf_counter() - started)
                return {"appends": appends, "puts": puts}
            return run

        runs = interleave({name: unit(name) for name in stores}, settings.store_repeats)
    finally:
        for store in stores.values():
            store.close()
        for server in servers.values():
            server.stop()
    rows = {}
    for name, repeats in runs.items():
        appends = sum((r["appends"] for r in repeats), [])
        puts = sum((r["puts"] for r in repeats), [])
        rows[name] = {"append_ms": float(np.median(appends) * 1e3),
                      "append_ms_p90": float(np.percentile(appends, 90) * 1e3),
                      "snapshot_put_ms": float(np.median(puts) * 1e3),
                      "snapshot_put_ms_p90": float(np.percentile(puts, 90) * 1e3)}
        log(f"ray bench store {name}: append {rows[name]['append_ms']:.2f} ms, snapshot put "
            f"({snapshot_bytes / 2**20:.1f} MiB) {rows[name]['snapshot_put_ms']:.0f} ms")
    always, everysec = runs["redis appendfsync always"], runs["redis appendfsync everysec"]
    cost = {"append": ratio_stats([np.median(r["appends"]) for r in always],
                                  [np.median(r["appends"]) for r in everysec]),
            "snapshot_put": ratio_stats([np.median(r["puts"]) for r in always],
                                        [np.median(r["puts"]) for r in everysec])}
    return {"append_bytes": settings.append_bytes, "snapshot_bytes": snapshot_bytes,
            "stores": rows, "always_vs_everysec": cost}


# ---- stream move ------------------------------------------------------------------------------
def stream_move(engine_dir: Path, settings: RayBenchSettings, threads: int, work: Path) -> dict:
    redis_server = RedisServer(work / "redis_move").start()
    try:
        servers = [ServerProcess(engine_dir, work / name, "--store", redis_server.url,
                                 threads=threads) for name in ("move_a", "move_b")]
        with servers[0] as a, servers[1] as b:
            with httpx.Client(timeout=TIMEOUT_S) as client:
                stream = client.post(f"{a.url}/v1/streams").json()["id"]
                history = np.random.default_rng(SEED + 22).choice(
                    np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", np.uint8),
                    settings.move_history)
                append(client, a.url, stream, bytes(history).decode())
                state_bytes = client.get(f"{a.url}/v1/streams/{stream}").json()["state_bytes"]
                holder, other = a, b
                moves, stays, aof = [], [], []
                for _ in range(settings.moves):
                    stays.append(append(client, holder.url, stream, "stay"))
                    before = redis_server.aof_bytes()
                    moves.append(append(client, other.url, stream, "move"))
                    aof.append(redis_server.aof_bytes() - before)
                    holder, other = other, holder
                snapshot = client.get(f"{holder.url}/v1/streams/{stream}/snapshot").content
    finally:
        redis_server.stop()
    result = {"history_tokens": settings.move_history, "state_bytes": state_bytes,
              "snapshot_bytes": len(snapshot), "move_ms": float(np.median(moves) * 1e3),
              "move_ms_min": float(min(moves) * 1e3), "move_ms_max": float(max(moves) * 1e3),
              "resident_append_ms": float(np.median(stays) * 1e3),
              "aof_bytes_per_move": int(np.median(aof)),
              "move_vs_resident": ratio_stats(moves, stays)}
    log(f"ray bench stream move: {result['move_ms']:.0f} ms [{result['move_ms_min']:.0f}, "
        f"{result['move_ms_max']:.0f}] beside {result['resident_append_ms']:.0f} ms resident; "
        f"snapshot {len(snapshot) / 2**20:.2f} MiB, AOF {result['aof_bytes_per_move'] / 2**20:.2f}"
        f" MiB per move")
    return result


def append(client: httpx.Client, url: str, stream: str, text: str) -> float:
    """Seconds of one acknowledged append."""
    started = time.perf_counter()
    answer = client.post(f"{url}/v1/streams/{stream}/append", json={"text": text})
    if answer.status_code != 200:
        raise BenchError(f"an append answered {answer.status_code}: {answer.text[:300]}")
    return time.perf_counter() - started


# ---- on a Ray cluster ------------------------------------------------------------------------
def failover(cluster: RayCluster, app: str, prefix: str, settings: RayBenchSettings) -> dict:
    from ray import serve

    url = cluster.url + prefix
    deaths, back = [], []
    with httpx.Client(timeout=TIMEOUT_S) as client:
        for _ in range(settings.failovers):
            stream = client.post(f"{url}/v1/streams").json()["id"]
            answer = client.post(f"{url}/v1/streams/{stream}/append", json={"text": "held"})
            if answer.status_code != 200:
                raise BenchError(f"an append answered {answer.status_code}")
            kill_replica(app, answer.headers["x-ctrt-replica"])
            killed = time.perf_counter()
            for _ in range(10_000):
                answer = client.post(f"{url}/v1/streams/{stream}/append", json={"text": "!"})
                if answer.status_code == 200:
                    break
                if answer.status_code != 503:
                    raise BenchError(f"after the kill an append answered {answer.status_code}")
                time.sleep(0.01)
            deaths.append(time.perf_counter() - killed)
            wait_for_replacement(serve, app)
            back.append(time.perf_counter() - killed)
    result = {"kills": settings.failovers,
              "to_answering_ms": float(np.median(deaths) * 1e3),
              "to_answering_ms_max": float(max(deaths) * 1e3),
              "to_replacement_s": float(np.median(back))}
    log(f"ray bench failover: answering again {result['to_answering_ms']:.0f} ms after the "
        f"kill (max {result['to_answering_ms_max']:.0f}), a replacement replica after "
        f"{result['to_replacement_s']:.1f} s")
    return result


async def _completions(url: str, prompts: list[bytes], new_tokens: int) -> tuple[int, float]:
    limits = httpx.Limits(max_connections=len(prompts) + 4)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits) as client:
        async def one(prompt: bytes) -> int:
            tokens = 0
            async with client.stream("POST", f"{url}/v1/completions", json={
                    "prompt": prompt.decode(), "max_tokens": new_tokens, "temperature": 0,
                    "stream": True}) as response:
                if response.status_code != 200:
                    raise BenchError(f"a completion answered {response.status_code}")
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        tokens += len(json.loads(line[6:])["choices"][0]["token_ids"])
            return tokens

        started = time.perf_counter()
        counts = await asyncio.gather(*(one(prompt) for prompt in prompts))
        return sum(counts), time.perf_counter() - started


def throughput(cluster: RayCluster, prefixes: dict[str, str],
               settings: RayBenchSettings) -> dict:
    prompts = [f"client {i}: ".encode() for i in range(settings.clients)]

    def unit(prefix: str):
        return lambda: dict(zip(("tokens", "seconds"), asyncio.run(
            _completions(cluster.url + prefix, prompts, settings.new_tokens))))

    units = {name: unit(prefix) for name, prefix in prefixes.items()}
    for run in units.values():
        run()  # warm-up
    runs = interleave(units, settings.throughput_repeats)
    rows = {}
    for name, repeats in runs.items():
        rates = [r["tokens"] / r["seconds"] for r in repeats]
        rows[name] = {"tokens_per_s": float(np.median(rates)), "tokens_per_s_min": min(rates),
                      "tokens_per_s_max": max(rates)}
    names = list(prefixes)
    ratio = ratio_stats([r["seconds"] / r["tokens"] for r in runs[names[0]]],
                        [r["seconds"] / r["tokens"] for r in runs[names[1]]])
    log(f"ray bench throughput, {settings.clients} clients: " + ", ".join(
        f"{name} {row['tokens_per_s']:.0f} tokens/s" for name, row in rows.items()))
    return {"clients": settings.clients, "new_tokens": settings.new_tokens, "apps": rows,
            "two_vs_one": ratio,
            "note": "CPU-bound on this machine's 2 cores: a sanity figure; scaling must be "
                    "measured on real nodes"}


def on_ray(engine_dir: Path, settings: RayBenchSettings, threads: int, work: Path) -> dict:
    from compressive_rt.serving.ray_app import RayDeployment
    from compressive_rt.serving.settings import ServeSettings

    with RayCluster(work, cpus=2 * threads) as cluster:
        serve_settings = ServeSettings(model_name="bench",
                                       streams=max(8, settings.clients, *settings.moving))
        apps = {"1 replica": ("one", "/one", 1), "2 replicas": ("two", "/two", 2)}
        for name, prefix, replicas in apps.values():
            cluster.deploy(name, RayDeployment(str(engine_dir), cluster.redis.url,
                                               serve_settings, replicas=replicas,
                                               replicas_per_node=1, threads=threads), prefix)
        from ray import serve

        return {"throughput": throughput(
                    cluster, {key: prefix for key, (_, prefix, _) in apps.items()}, settings),
                "failover": failover(cluster, "two", "/two", settings),
                "failover_streams": failover_many(
                    cluster.url + "/two", lambda replica: kill_replica("two", replica),
                    lambda: wait_for_replacement(serve, "two"), settings.moving)}


# ---- driver ----------------------------------------------------------------------------------
def run_ray_benchmark(out_dir: Path, threads: int, profile: str = "full") -> dict:
    """Run the four experiments; writes ray.json to out_dir and prints the tables."""
    if profile not in PROFILES:
        raise BenchError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if threads < 1:
        raise BenchError(f"--threads must be >= 1, got {threads}")
    settings = PROFILES[profile]
    out_dir.mkdir(parents=True, exist_ok=True)
    config = ModelConfig(**settings.config)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ray-") as folder:
        work = Path(folder)
        log(f"ray bench: exporting a random {config.n_layers}-layer d={config.d_model} model")
        engine_dir = export_engine(random_model(config), work / "engine")
        session = Session(engine_dir, max_streams=1, threads=threads)
        identity = engine_namespace(session.manifest)
        stream = session.add_stream()
        session.feed({stream: list(b"a snapshot of this engine")}, want_logits=False)
        snapshot_bytes = len(session.snapshot(stream))
        session.close()
        results = {
            "profile": profile, "threads": threads, "config": config.to_dict(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "load_average_at_start": os.getloadavg()},
            "store_costs": store_costs(identity, snapshot_bytes, settings, work),
            "stream_move": stream_move(engine_dir, settings, threads, work),
            "moving_streams": moving_streams(engine_dir, settings.moving,
                                             settings.moving_history, threads, work),
            "fence": fence_cost(engine_dir, settings.fence_reads, settings.fence_steps,
                                settings.fence_repeats, threads, work),
            **on_ray(engine_dir, settings, threads, work)}
    results["seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = os.getloadavg()
    (out_dir / "ray.json").write_text(json.dumps(results, indent=2))
    print(report(results))
    return results


def report(results: dict) -> str:
    costs = results["store_costs"]
    lines = [f"ctrt bench --ray ({results['profile']}, {results['threads']} threads per "
             f"replica); load average {results['machine']['load_average_at_start'][0]:.1f} "
             f"at start", "",
             f"| store | append of {costs['append_bytes']} B, ms (p90) | snapshot put of "
             f"{costs['snapshot_bytes'] / 2**20:.2f} MiB, ms (p90) |", "|---|---|---|"]
    for name, row in costs["stores"].items():
        lines.append(f"| {name} | {row['append_ms']:.2f} ({row['append_ms_p90']:.2f}) | "
                     f"{row['snapshot_put_ms']:.1f} ({row['snapshot_put_ms_p90']:.1f}) |")
    cost = costs["always_vs_everysec"]
    lines.append(f"appendfsync always / everysec: append {cost['append']['median']:.2f}x "
                 f"[{cost['append']['min']:.2f}, {cost['append']['max']:.2f}], snapshot put "
                 f"{cost['snapshot_put']['median']:.2f}x [{cost['snapshot_put']['min']:.2f}, "
                 f"{cost['snapshot_put']['max']:.2f}]")
    move = results["stream_move"]
    lines += ["", f"stream move between two servers on Redis (appendfsync always), "
                  f"{move['history_tokens']} tokens of history: {move['move_ms']:.0f} ms "
                  f"[{move['move_ms_min']:.0f}, {move['move_ms_max']:.0f}] beside "
                  f"{move['resident_append_ms']:.0f} ms for an append on the holder; state "
                  f"{move['state_bytes'] / 2**20:.2f} MiB, snapshot "
                  f"{move['snapshot_bytes'] / 2**20:.2f} MiB, Redis AOF "
                  f"{move['aof_bytes_per_move'] / 2**20:.2f} MiB written per move"]
    fail = results["failover"]
    lines.append(f"failover ({fail['kills']} kills): the stream answers again "
                 f"{fail['to_answering_ms']:.0f} ms after its replica's death (max "
                 f"{fail['to_answering_ms_max']:.0f} ms); Serve runs a replacement after "
                 f"{fail['to_replacement_s']:.1f} s")
    lines += fleet_report(results)
    flow = results["throughput"]
    lines.append(f"throughput, {flow['clients']} streaming clients x {flow['new_tokens']} "
                 f"tokens: " + ", ".join(f"{name} {row['tokens_per_s']:.0f} tokens/s "
                                        f"[{row['tokens_per_s_min']:.0f}, "
                                        f"{row['tokens_per_s_max']:.0f}]"
                                        for name, row in flow["apps"].items())
                 + f"; 2 vs 1: {flow['two_vs_one']['median']:.2f}x ({flow['note']})")
    return "\n".join(lines)

