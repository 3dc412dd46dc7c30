"""Resident memory of the native runtime with many sessions: one shared engine against one
engine per session (the only way before ctrt_engine_open).

    python -m compressive_rt.benchmarks.native_memory ENGINE_DIR [--sessions 1 4 16]

Each row runs in a fresh process: open the engine(s) at one thread, then `sessions` sessions of
one stream each, feed every stream one segment (so each graph has run and prepacked), and read
VmRSS. The process's RSS before the first engine opens (Python, numpy, the library) is printed
as the baseline; the rest is the engine(s) and the sessions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from compressive_rt.benchmarks.launchers.native import NativeEngine, NativeSession


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(engine_dir: str, sessions: int, shared: bool) -> dict:
    """RSS (MiB) before the first engine opens and after `sessions` sessions each fed a segment."""
    before = rss_mib()
    engine = NativeEngine(engine_dir, threads=1) if shared else None
    opened = [NativeSession(engine if shared else engine_dir, threads=1) for _ in range(sessions)]
    tokens = np.arange(opened[0].seg_len, dtype=np.int32) % opened[0].vocab_size
    for session in opened:
        session.feed({session.add_stream(): tokens}, want_logits=False)
    return {"sessions": sessions, "shared": shared, "baseline_mib": round(before, 1),
            "rss_mib": round(rss_mib(), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine_dir")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--one", nargs=2, metavar=("SESSIONS", "SHARED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.engine_dir, int(args.one[0]), args.one[1] == "1")))
        return
    print(f"{'sessions':>8} {'engine':>10} {'baseline MiB':>13} {'RSS MiB':>9} {'added MiB':>10}")
    for sessions in args.sessions:
        for shared in (True, False):
            done = subprocess.run([sys.executable, "-m", __spec__.name, args.engine_dir, "--one",
                                   str(sessions), str(int(shared))],
                                  capture_output=True, text=True, check=True)
            row = json.loads(done.stdout)
            print(f"{sessions:>8} {'shared' if shared else 'each own':>10} "
                  f"{row['baseline_mib']:>13} {row['rss_mib']:>9} "
                  f"{row['rss_mib'] - row['baseline_mib']:>10.1f}")


if __name__ == "__main__":
    main()
