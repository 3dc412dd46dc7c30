"""`ctrt bench --serve`: `ctrt serve` measured on loopback beside the in-process scheduler.

Three experiments, every loop bounded in count and time, every server on 127.0.0.1 and stopped
at the end:
- concurrency: N streaming HTTP clients (1, 4, 16, 32) against a `ctrt serve` subprocess, and
  the same N requests through runtime.scheduler in this process on the same engine, same
  threads, interleaved per repeat (the server idles while the scheduler runs and the other way
  round). Generated tokens/s, time to first token and inter-token latency (p50, p99), and the
  in-process decode step time at that batch.
- long-lived stream: its state bytes and the time to spill it (snapshot, store write with
  fsync, slot freed) and resume it (store read, restore), after 10k and 100k appended tokens,
  through the server's own store (serving.sqlite_store) and the Session; beside them the KV
  cache a full-attention transformer of the same width and depth holds for that history.
- burst: 4x the queue's capacity of requests at once against a server with a small queue:
  each one completes (checked against the in-process greedy output) or gets 429; counts of
  statuses, no 5xx, no connection left hanging (every client has a timeout).
- abuse: a well-behaved streaming client during half-open connections, withheld uploads, a
  create flood and a many-entry zip (benchmarks/serve_abuse.py).
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
from compressive_rt.benchmarks.launchers.server_process import ServerProcess
from compressive_rt.benchmarks.measure import ratio_stats
from compressive_rt.benchmarks.serve_abuse import AbuseSettings, abuse_report, run_abuse
from compressive_rt.benchmarks.settings import SEED, BenchError, log
from compressive_rt.benchmarks.workloads import interleave
from compressive_rt.ct_reference.config import ModelConfig
from compressive_rt.runtime.generate import generate
from compressive_rt.runtime.sampling import Sampling
from compressive_rt.runtime.scheduler import Scheduler
from compressive_rt.runtime.session import Session
from compressive_rt.runtime.snapshot import most_snapshot_bytes
from compressive_rt.serving.engine import row_specs
from compressive_rt.serving.namespaces import engine_namespace
from compressive_rt.serving.sqlite_store import SQLiteStore

CLIENT_TIMEOUT_S = 300


@dataclass(frozen=True)
class ServeBenchSettings:
    config: dict = field(default_factory=dict)  # ModelConfig overrides of the default config
    concurrency: tuple[int, ...] = (1, 4, 16, 32)
    new_tokens: int = 32
    prompt_bytes: int = 16
    repeats: int = 3
    history_tokens: tuple[int, ...] = (10_000, 100_000)
    spill_repeats: int = 5
    burst_queue: int = 8
    burst_streams: int = 4
    burst_new_tokens: int = 16
    abuse: AbuseSettings = AbuseSettings()


FULL = ServeBenchSettings()
QUICK = ServeBenchSettings(
    config=dict(n_layers=2, d_model=256, n_heads=4, d_ff=1024, seg_len=64, mem_len=64,
                cmem_len=32),
    repeats=2, history_tokens=(10_000, 100_000), spill_repeats=3)
SMOKE = ServeBenchSettings(
    config=dict(n_layers=1, d_model=64, n_heads=2, d_ff=128, seg_len=16, mem_len=16,
                cmem_len=8, compress_rate=2),
    concurrency=(1, 4), new_tokens=4, prompt_bytes=8, repeats=1, history_tokens=(500, 2000),
    spill_repeats=1, burst_queue=2, burst_streams=1, burst_new_tokens=4,
    abuse=AbuseSettings(half_open=50, withheld_uploads=10, upload_bytes=1_000_000, creates=200,
                        zip_entries=20_000, zip_uploads=2, client_tokens=64))
PROFILES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    array = np.asarray(values) * 1e3
    return {"p50_ms": float(np.percentile(array, 50)), "p99_ms": float(np.percentile(array, 99))}


# ---- concurrency ------------------------------------------------------------------------------
async def _http_clients(url: str, prompts: list[bytes], new_tokens: int) -> dict:
    """Every prompt as one streaming completion at once; token arrival times per request."""
    limits = httpx.Limits(max_connections=len(prompts) + 4)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        async def one(prompt: bytes) -> list[float]:
            arrivals = []
            sent = time.perf_counter()
            async with client.stream("POST", f"{url}/v1/completions", json={
                    "prompt": prompt.decode(), "max_tokens": new_tokens,
                    "temperature": 0, "stream": True}) as response:
                if response.status_code != 200:
                    raise BenchError(f"the server answered {response.status_code}")
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        count = len(json.loads(line[6:])["choices"][0]["token_ids"])
                        arrivals += [time.perf_counter()] * count
            return [sent, *arrivals]

        started = time.perf_counter()
        times = await asyncio.gather(*(one(prompt) for prompt in prompts))
        seconds = time.perf_counter() - started
    tokens = sum(len(t) - 1 for t in times)
    return {"seconds": seconds, "tokens": tokens,
            "ttft": [t[1] - t[0] for t in times],
            "itl": [b - a for t in times for a, b in zip(t[1:], t[2:])]}


def _in_process(session: Session, prompts: list[bytes], new_tokens: int) -> dict:
    """The same requests through runtime.scheduler; token times from its callbacks."""
    scheduler = Scheduler(session)
    arrivals: dict[int, list[float]] = {}
    steps = []
    started = time.perf_counter()
    for prompt in prompts:
        request = scheduler.submit(prompt, new_tokens, Sampling(greedy=True),
                                   on_token=lambda e: arrivals[e.request_id].append(
                                       time.perf_counter()))
        arrivals[request] = [started]
    while scheduler.waiting or scheduler.running:
        before = time.perf_counter()
        scheduler.step()
        steps.append(time.perf_counter() - before)
    seconds = time.perf_counter() - started
    times = list(arrivals.values())
    # decode steps: every stream past its prompt (the prompts here fit one segment)
    decode = steps[1:] if len(steps) > 1 else steps
    return {"seconds": seconds, "tokens": sum(len(t) - 1 for t in times),
            "ttft": [t[1] - t[0] for t in times],
            "itl": [b - a for t in times for a, b in zip(t[1:], t[2:])],
            "step_p50_ms": float(np.median(decode) * 1e3)}


def concurrency_curve(engine_dir: Path, settings: ServeBenchSettings, threads: int,
                      work: Path) -> list[dict]:
    rng = np.random.default_rng(SEED + 19)
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", dtype=np.uint8)
    prompts = [bytes(rng.choice(alphabet, settings.prompt_bytes)) for _ in
               range(max(settings.concurrency))]
    session = Session(engine_dir, max_streams=max(settings.concurrency), threads=threads)
    rows = []
    with ServerProcess(engine_dir, work / "store_concurrency", "--no-access-log",
                       "--streams", str(max(settings.concurrency)),
                       "--queue-size", str(4 * max(settings.concurrency)),
                       threads=threads) as server:
        for clients in settings.concurrency:
            batch = prompts[:clients]
            units = {"http": lambda b=batch: asyncio.run(
                         _http_clients(server.url, b, settings.new_tokens)),
                     "in_process": lambda b=batch: _in_process(session, b, settings.new_tokens)}
            for unit in units.values():
                unit()  # warm-up: the first calls at this batch
            runs = interleave(units, settings.repeats)
            row: dict = {"clients": clients}
            for key, repeats in runs.items():
                rates = [r["tokens"] / r["seconds"] for r in repeats]
                row[key] = {"tokens_per_s": float(np.median(rates)),
                            "tokens_per_s_min": min(rates), "tokens_per_s_max": max(rates),
                            "ttft": percentiles(sum((r["ttft"] for r in repeats), [])),
                            "itl": percentiles(sum((r["itl"] for r in repeats), []))}
            row["in_process"]["step_p50_ms"] = float(np.median(
                [r["step_p50_ms"] for r in runs["in_process"]]))
            row["http_vs_in_process"] = ratio_stats(
                [r["seconds"] / r["tokens"] for r in runs["in_process"]],
                [r["seconds"] / r["tokens"] for r in runs["http"]])
            rows.append(row)
            log(f"serve {clients} clients: http {row['http']['tokens_per_s']:.0f} tokens/s, "
                f"in-process {row['in_process']['tokens_per_s']:.0f}; http itl p50 "
                f"{row['http']['itl']['p50_ms']:.1f} ms vs step "
                f"{row['in_process']['step_p50_ms']:.1f} ms")
    return rows


# ---- long-lived stream -------------------------------------------------------------------------
def long_lived_stream(engine_dir: Path, settings: ServeBenchSettings, threads: int,
                      work: Path) -> list[dict]:
    """Spill and resume through the server's store after growing histories."""
    session = Session(engine_dir, max_streams=2, threads=threads)
    config = session.manifest.config
    store = SQLiteStore(work / "store_long", engine_namespace(session.manifest))
    store.create("long")
    version = store.take("long").version
    stream = session.add_stream()
    rng = np.random.default_rng(SEED + 20)
    rows, fed = [], 0
    try:
        for history in settings.history_tokens:
            while fed < history:  # whole segments, the scoring path
                count = min(history - fed, 64 * config["seg_len"])
                session.feed({stream: rng.integers(0, 256, count).astype(np.int32)},
                             want_logits=False)
                fed += count
            session.feed({stream: [1, 2, 3]}, want_logits=False)
            fed += 3
            spills, resumes, sizes = [], [], set()
            for _ in range(settings.spill_repeats):
                before = time.perf_counter()
                data = session.snapshot(stream)
                store.put_snapshot("long", version, fed, data)
                session.remove_stream(stream)
                spills.append(time.perf_counter() - before)
                before = time.perf_counter()
                taken = store.take("long")
                version = taken.version
                stream = session.restore(taken.snapshot)
                resumes.append(time.perf_counter() - before)
                sizes.add(len(data))
            check = Session(engine_dir, max_streams=1, threads=threads)
            probe = check.restore(data)
            # the resumed stream continues exactly: the same next logits as before the spill
            got = session.feed({stream: [4]})[stream]
            want = check.feed({probe: [4]})[probe]
            state = sum(a.nbytes for a in session.stream_state(stream).values())
            fed += 1
            kv_cache = 2 * config["n_layers"] * fed * config["d_model"] * 4
            rows.append({"history_tokens": fed, "state_bytes": state,
                         "snapshot_bytes": sorted(sizes)[-1],
                         "spill_ms": float(np.median(spills) * 1e3),
                         "spill_ms_max": float(max(spills) * 1e3),
                         "resume_ms": float(np.median(resumes) * 1e3),
                         "resume_ms_max": float(max(resumes) * 1e3),
                         "full_attention_kv_cache_bytes": kv_cache,
                         "resumed_logits_max_abs_diff": float(np.abs(got - want).max())})
            log(f"serve long-lived stream at {fed} tokens: state {state / 2**20:.1f} MiB, "
                f"spill {rows[-1]['spill_ms']:.0f} ms, resume {rows[-1]['resume_ms']:.0f} ms; "
                f"a full-attention KV cache would hold {kv_cache / 2**20:.0f} MiB")
    finally:
        store.close()
    return rows


# ---- burst -----------------------------------------------------------------------------------
def burst(engine_dir: Path, settings: ServeBenchSettings, threads: int, work: Path) -> dict:
    count = 4 * settings.burst_queue
    prompts = [f"request {i}: ".encode() for i in range(count)]
    with ServerProcess(engine_dir, work / "store_burst", "--no-access-log",
                       "--streams", str(settings.burst_streams),
                       "--queue-size", str(settings.burst_queue), threads=threads) as server:
        async def fire() -> list:
            limits = httpx.Limits(max_connections=count + 4)
            async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
                async def one(prompt: bytes):
                    try:
                        return await client.post(f"{server.url}/v1/completions", json={
                            "prompt": prompt.decode(), "max_tokens": settings.burst_new_tokens,
                            "temperature": 0})
                    except httpx.HTTPError as exc:
                        return exc
                return await asyncio.gather(*(one(p) for p in prompts))

        started = time.perf_counter()
        answers = asyncio.run(fire())
        seconds = time.perf_counter() - started
    session = Session(engine_dir, threads=threads)
    statuses: dict[str, int] = {}
    wrong = 0
    for prompt, answer in zip(prompts, answers, strict=True):
        key = type(answer).__name__ if isinstance(answer, Exception) else str(answer.status_code)
        statuses[key] = statuses.get(key, 0) + 1
        if key == "200":
            want = generate(session, prompt, settings.burst_new_tokens, Sampling(greedy=True))
            wrong += answer.json()["choices"][0]["token_ids"] != list(want)
    result = {"requests": count, "queue_size": settings.burst_queue,
              "streams": settings.burst_streams, "statuses": statuses,
              "completed_wrong": wrong, "seconds": seconds,
              "no_5xx_no_hang": set(statuses) <= {"200", "429"}}
    log(f"serve burst of {count}: {statuses}, {wrong} wrong, {seconds:.1f} s")
    return result


def abuse(engine_dir: Path, settings: ServeBenchSettings, threads: int, work: Path) -> list:
    session = Session(engine_dir, max_streams=1, threads=threads)
    upload_limit = most_snapshot_bytes(session.manifest, row_specs(session))
    with ServerProcess(engine_dir, work / "store_abuse", "--no-access-log",
                       threads=threads) as server:
        return run_abuse(server, settings.abuse, upload_limit)


# ---- driver ----------------------------------------------------------------------------------
def targets(rows: list[dict]) -> list[dict]:
    """The serving issue's targets at 16 clients (when measured)."""
    row = next((r for r in rows if r["clients"] == 16), None)
    if row is None:
        return []
    ratio = row["http"]["tokens_per_s"] / row["in_process"]["tokens_per_s"]
    itl = row["http"]["itl"]["p50_ms"] / row["in_process"]["step_p50_ms"]
    return [{"target": "16 clients: HTTP tokens/s >= 90% of in-process", "value": ratio,
             "met": ratio >= 0.9},
            {"target": "16 clients: p50 inter-token latency <= 1.5x the in-process step",
             "value": itl, "met": itl <= 1.5}]


def run_serve_benchmark(out_dir: Path, threads: int, profile: str = "full") -> dict:
    """Run the three experiments; writes serve.json to out_dir and prints the tables."""
    if profile not in PROFILES:
        raise BenchError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if threads < 1:
        raise BenchError(f"--threads must be >= 1, got {threads}")
    settings = PROFILES[profile]
    out_dir.mkdir(parents=True, exist_ok=True)
    config = ModelConfig(**settings.config)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".serve-") as folder:
        work = Path(folder)
        log(f"serve bench: exporting a random {config.n_layers}-layer d={config.d_model} model")
        engine_dir = export_engine(random_model(config), work / "engine")
        results = {
            "profile": profile, "threads": threads, "config": config.to_dict(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "load_average_at_start": os.getloadavg()},
            "new_tokens": settings.new_tokens, "prompt_bytes": settings.prompt_bytes,
            "concurrency": concurrency_curve(engine_dir, settings, threads, work),
            "long_lived": long_lived_stream(engine_dir, settings, threads, work),
            "burst": burst(engine_dir, settings, threads, work),
            "abuse": abuse(engine_dir, settings, threads, work)}
    results["targets"] = targets(results["concurrency"])
    results["seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = os.getloadavg()
    (out_dir / "serve.json").write_text(json.dumps(results, indent=2))
    print(report(results))
    return results


def report(results: dict) -> str:
    lines = [f"ctrt bench --serve ({results['profile']}, {results['threads']} threads, "
             f"{results['new_tokens']} new tokens per request); load average "
             f"{results['machine']['load_average_at_start'][0]:.1f} at start",
             "", "| clients | HTTP tokens/s | in-process tokens/s | HTTP/in-process | HTTP TTFT "
             "p50/p99 ms | in-process TTFT p50/p99 ms | HTTP ITL p50/p99 ms | in-process ITL "
             "p50/p99 ms | in-process step p50 ms |", "|" + "---|" * 9]
    for row in results["concurrency"]:
        http, local = row["http"], row["in_process"]
        ratio = row["http_vs_in_process"]
        lines.append(
            f"| {row['clients']} | {http['tokens_per_s']:.0f} | {local['tokens_per_s']:.0f} | "
            f"{ratio['median']:.2f} [{ratio['min']:.2f}, {ratio['max']:.2f}] | "
            f"{http['ttft']['p50_ms']:.1f} / {http['ttft']['p99_ms']:.1f} | "
            f"{local['ttft']['p50_ms']:.1f} / {local['ttft']['p99_ms']:.1f} | "
            f"{http['itl']['p50_ms']:.1f} / {http['itl']['p99_ms']:.1f} | "
            f"{local['itl']['p50_ms']:.1f} / {local['itl']['p99_ms']:.1f} | "
            f"{local['step_p50_ms']:.1f} |")
    lines += ["", "| history tokens | state MiB | snapshot MiB | spill ms (max) | resume ms (max) "
                  "| full-attention KV cache MiB |", "|" + "---|" * 6]
    for row in results["long_lived"]:
        lines.append(f"| {row['history_tokens']} | {row['state_bytes'] / 2**20:.2f} | "
                     f"{row['snapshot_bytes'] / 2**20:.2f} | {row['spill_ms']:.0f} "
                     f"({row['spill_ms_max']:.0f}) | {row['resume_ms']:.0f} "
                     f"({row['resume_ms_max']:.0f}) | "
                     f"{row['full_attention_kv_cache_bytes'] / 2**20:.0f} |")
    burst_ = results["burst"]
    lines += ["", f"burst: {burst_['requests']} requests at once, queue {burst_['queue_size']}, "
                  f"{burst_['streams']} streams: {burst_['statuses']}, completed wrong "
                  f"{burst_['completed_wrong']}, {burst_['seconds']:.1f} s"]
    lines += abuse_report(results["abuse"])
    for target in results["targets"]:
        lines.append(f"target {'met' if target['met'] else 'MISSED'}: {target['target']} "
                     f"({target['value']:.2f})")
    return "\n".join(lines)

