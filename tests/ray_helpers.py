"""For the Ray tests: Ray itself (the `ray` extra; missing on a developer machine it skips,
under CI=true it fails) and the memory a local cluster's processes hold (the cluster itself:
benchmarks/launchers/ray_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

READY_DEADLINE_S = 300  # Ray and Serve start in tens of seconds; minutes on a loaded machine


def need_ray() -> None:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        reason = f"Ray Serve is not installed ({exc}): pip install -e '.[ray]'"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def tree_rss_bytes(root: int) -> int:
    """Resident bytes of `root` and every process below it (Ray's nodes and workers)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            pages = int((entry / "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        rss[int(entry.name)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def wait_ready(server: subprocess.Popen, url: str, log: Path) -> None:
    """Until `ctrt serve --ray` (the subprocess `server`, writing to `log`) answers /ready."""
    deadline = time.monotonic() + READY_DEADLINE_S
    while True:
        assert server.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
