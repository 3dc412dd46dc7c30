"""A server process paused and resumed when the test says, not after a sleep: `paused(process)`
stops it (SIGSTOP) and returns only once the kernel shows every thread of it stopped, and at
the end of the block resumes it (SIGCONT) and returns once none is. What happens while it is
paused (another server taking its streams) is thereby done before it runs again, whatever the
machine's load. For the tests of a holder paused past its claim (and of leases), and of a
Ray replica paused (`Process`: a process by its id)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STOPPED = {"T", "t"}  # /proc/PID/task/TID/stat states: stopped by a signal, or traced
WAIT_S = 60  # the kernel acts on a signal in microseconds: this bound only ends a broken test


def thread_states(pid: int) -> list[str]:
    """The scheduler state of every thread of the process."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):  # the thread ended meanwhile
            continue
    return states


def _wait_until(pid: int, stopped: bool) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        states = thread_states(pid)
        if (all(state in STOPPED for state in states) if stopped
                else not any(state in STOPPED for state in states)):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not {'stop' if stopped else 'resume'} "
                                 f"(thread states {states})")
        time.sleep(0.001)


class Process:
    """A process known by its id only (a Ray replica's, from its answers' X-Ctrt-Pid)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


@contextmanager
def paused(process: subprocess.Popen | Process) -> Iterator[None]:
    """Every thread of `process` stopped for the duration of the block."""
    process.send_signal(signal.SIGSTOP)
    _wait_until(process.pid, stopped=True)
    try:
        yield
    finally:
        process.send_signal(signal.SIGCONT)
        _wait_until(process.pid, stopped=False)
