"""The abuse section of `ctrt bench --serve`: what a hostile client costs a `ctrt serve`.

One server (127.0.0.1, its default bounds) and one well-behaved client: a streaming greedy
completion whose inter-token latency (p50, p99) is measured on the quiet server and again
during each of (a) half-open connections that never finish their headers, (b) snapshot
uploads that withhold the end of their body, (c) a flood of stream creates, (d) uploads of a
zip whose directory holds tens of thousands of entries ((a) and (b) are opened before the
client starts and held while it runs; (c) and (d) run beside it). During each, a sampler thread
reads the server's RSS and open file descriptors (/proc, every 20 ms); after each, the store's
bytes (`ctrt_store_bytes`). Every count and wait is bounded; every socket is closed at the end.
"""

from __future__ import annotations

import asyncio
import io
import resource
import socket
import struct
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from compressive_rt.benchmarks.settings import BenchError, log
from compressive_rt.serving.metrics import sample_value

CLIENT_TIMEOUT_S = 120
SAMPLE_S = 0.02
RETRY_S = 0.1
PARTIAL_HEADERS = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
ZIP_ENTRY_BYTES = 47  # a directory entry of a one-byte name
FD_MARGIN = 64  # descriptors this process keeps for itself beyond the abusive sockets


@dataclass(frozen=True)
class AbuseSettings:
    half_open: int = 2000
    withheld_uploads: int = 100
    upload_bytes: int = 6_000_000
    creates: int = 5000
    zip_entries: int = 118_000
    zip_uploads: int = 3
    client_tokens: int = 64


class ServerSampler:
    """The peak RSS and open descriptors of process `pid` while it runs (a thread)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.rss_peak, self.fds_peak = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        with open(f"/proc/{self.pid}/status") as status:
            rss = next(int(line.split()[1]) * 1024 for line in status
                       if line.startswith("VmRSS:"))
        self.rss_peak = max(self.rss_peak, rss)
        self.fds_peak = max(self.fds_peak, len(list(Path(f"/proc/{self.pid}/fd").iterdir())))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> ServerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()  # the state at the end, whatever the sampling interval missed


def allow_descriptors(wanted: int) -> int:
    """Raise this process's soft descriptor limit towards `wanted` + a margin; returns how many
    abusive sockets it can open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted + FD_MARGIN:
        soft = min(hard, wanted + FD_MARGIN)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return min(wanted, soft - FD_MARGIN)


def open_sockets(port: int, count: int, first_bytes: Callable[[], bytes]) -> list[socket.socket]:
    """`count` connections, each sent `first_bytes()` and then left open."""
    sockets = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(first_bytes())
        except OSError:  # refused or closed by the server's bound: that is the point
            continue
        sockets.append(sock)
    return sockets


def directory_zip(entries: int) -> bytes:
    """A zip of one empty member whose directory lists it `entries` times (47 bytes each)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a", b"")
    data = buffer.getvalue()
    end = data.rfind(b"PK\x05\x06")
    directory_at, directory_bytes = struct.unpack_from("<L", data, end + 16)[0], \
        struct.unpack_from("<L", data, end + 12)[0]
    directory = data[directory_at:directory_at + directory_bytes] * entries
    record = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries & 0xFFFF, entries & 0xFFFF,
                         len(directory), directory_at, 0)
    return data[:directory_at] + directory + record


async def streaming_client(url: str, tokens: int) -> tuple[list[float], float]:
    """One streaming greedy completion, retried while the server refuses it (503: a bound is
    full until the header timeout frees it); (the gaps between its tokens, the seconds it
    waited to get in)."""
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:
        while time.perf_counter() - started < CLIENT_TIMEOUT_S:
            arrivals = []
            try:
                async with client.stream("POST", f"{url}/v1/completions", json={
                        "prompt": "The ", "max_tokens": tokens, "temperature": 0,
                        "stream": True}) as answer:
                    if answer.status_code == 503:
                        await asyncio.sleep(RETRY_S)
                        continue
                    if answer.status_code != 200:
                        raise BenchError(f"the well-behaved client got {answer.status_code}")
                    waited = time.perf_counter() - started
                    async for line in answer.aiter_lines():
                        if line.startswith("data: {"):
                            arrivals.append(time.perf_counter())
            except httpx.TransportError:  # closed at once by the connection bound
                await asyncio.sleep(RETRY_S)
                continue
            return [b - a for a, b in zip(arrivals, arrivals[1:])], waited
    raise BenchError(f"the well-behaved client did not get in within {CLIENT_TIMEOUT_S} s")


async def create_flood(url: str, count: int) -> dict[str, int]:
    statuses: dict[str, int] = {}
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        async def one() -> None:
            try:
                key = str((await client.post(f"{url}/v1/streams")).status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            statuses[key] = statuses.get(key, 0) + 1
        await asyncio.gather(*(one() for _ in range(count)))
    return statuses


async def zip_uploads(url: str, stream: str, data: bytes, count: int) -> dict[str, int]:
    statuses: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:
        for answer in await asyncio.gather(*(
                client.put(f"{url}/v1/streams/{stream}/snapshot", content=data)
                for _ in range(count))):
            statuses[str(answer.status_code)] = statuses.get(str(answer.status_code), 0) + 1
    return statuses


def metric(url: str, name: str) -> float:
    return sum(sample_value(httpx.get(f"{url}/metrics", timeout=CLIENT_TIMEOUT_S).text, name))


def run_abuse(server: object, settings: AbuseSettings, upload_limit: int) -> list[dict]:
    """Each scenario's row, the quiet one first; `server` is a started ServerProcess whose
    engine's snapshot uploads may be `upload_limit` bytes: the withheld uploads and the zip
    are kept under it (else the size check alone would refuse them)."""
    url, port, pid = server.url, server.port, server.process.pid
    stream = httpx.post(f"{url}/v1/streams", timeout=CLIENT_TIMEOUT_S).json()["id"]
    sockets_allowed = allow_descriptors(max(settings.half_open, settings.withheld_uploads))
    upload_bytes = min(settings.upload_bytes, upload_limit)
    upload_head = (f"PUT /v1/streams/{stream}/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Content-Length: {upload_bytes}\r\n\r\n").encode() + bytes(1000)
    zip_entries = min(settings.zip_entries, (upload_limit - 1000) // ZIP_ENTRY_BYTES)
    zip_data = directory_zip(zip_entries)

    def sockets_of(first: bytes, count: int) -> Callable[[], dict]:
        """Connections opened before the client starts and held while it runs."""
        def scenario() -> dict:
            held = open_sockets(port, min(count, sockets_allowed), lambda: first)
            return {"held": held, "opened": len(held)}
        return scenario

    held_first = {"quiet", "half-open", "withheld"}  # else: the abuse runs beside the client
    scenarios: dict[str, Callable[[], dict]] = {
        "quiet": dict,
        f"{settings.half_open} half-open connections": sockets_of(PARTIAL_HEADERS,
                                                                 settings.half_open),
        f"{settings.withheld_uploads} withheld {upload_bytes / 1e6:.1f} MB uploads":
            sockets_of(upload_head, settings.withheld_uploads),
        f"{settings.creates} stream creates": lambda: {"statuses": asyncio.run(
            create_flood(url, settings.creates))},
        f"{settings.zip_uploads} uploads of a {zip_entries}-entry zip "
        f"({len(zip_data) / 1e6:.1f} MB)": lambda: {"statuses": asyncio.run(
            zip_uploads(url, stream, zip_data, settings.zip_uploads))},
    }
    rows = []
    for name, start in scenarios.items():
        with ServerSampler(pid) as sampler:
            done: dict = {}
            abuse = threading.Thread(target=lambda s=start: done.update(s()), daemon=True)
            abuse.start()
            if any(word in name for word in held_first):
                abuse.join(CLIENT_TIMEOUT_S)
            gaps, waited = asyncio.run(streaming_client(url, settings.client_tokens))
            abuse.join(CLIENT_TIMEOUT_S)
        for sock in done.pop("held", []):
            sock.close()
        gaps_ms = sorted(gap * 1e3 for gap in gaps)
        row = {"scenario": name, "itl_p50_ms": gaps_ms[len(gaps_ms) // 2],
               "itl_p99_ms": gaps_ms[min(len(gaps_ms) - 1, int(0.99 * len(gaps_ms)))],
               "client_waited_s": waited, "rss_peak_bytes": sampler.rss_peak,
               "fds_peak": sampler.fds_peak,
               "store_bytes": metric(url, "ctrt_store_bytes"), **done}
        rows.append(row)
        log(f"serve abuse, {name}: itl p50 {row['itl_p50_ms']:.1f} ms, p99 "
            f"{row['itl_p99_ms']:.1f} ms, RSS {row['rss_peak_bytes'] / 2**20:.0f} MiB, "
            f"{row['fds_peak']} fds")
    refused = httpx.get(f"{url}/metrics", timeout=CLIENT_TIMEOUT_S).text
    rows[0]["refused"] = [line for line in refused.splitlines()
                          if line.startswith("ctrt_refused_total{")]
    return rows


def abuse_report(rows: list[dict]) -> list[str]:
    quiet_p99 = rows[0]["itl_p99_ms"]
    lines = ["", "| during | client waited s | client ITL p50 / p99 ms | p99 vs quiet | server "
                 "peak RSS MiB | peak open fds | store bytes | what the abuse got |",
             "|" + "---|" * 8]
    for row in rows:
        got = row.get("statuses") or (f"{row['opened']} connections opened"
                                      if "opened" in row else "")
        lines.append(f"| {row['scenario']} | {row['client_waited_s']:.1f} | "
                     f"{row['itl_p50_ms']:.1f} / {row['itl_p99_ms']:.1f} "
                     f"| {row['itl_p99_ms'] / quiet_p99:.2f}x | "
                     f"{row['rss_peak_bytes'] / 2**20:.0f} | {row['fds_peak']} | "
                     f"{row['store_bytes']:.0f} | {got} |")
    lines += ["", "refusals: " + (", ".join(rows[0]["refused"]) or "none")]
    return lines
