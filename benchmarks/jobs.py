"""Training experiments' runs, one at a time or several at once in their own processes."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from compressive_rt.errors import CtrtError


def run_jobs(function: Callable[[Any], Any], job_args: Sequence[Any], jobs: int) -> Iterator[Any]:
    """function(args) for each of job_args, in order. With jobs > 1 up to `jobs` run at once,
    each in a spawned process (no fork of a process that ran torch) with one torch thread, so
    that the runs share the cores instead of oversubscribing them."""
    if jobs < 1:  # checked at the call, before any run starts
        raise CtrtError(f"--jobs must be >= 1, got {jobs}")
    return map(function, job_args) if jobs == 1 else _in_processes(function, job_args, jobs)


def _in_processes(function: Callable[[Any], Any], job_args: Sequence[Any],
                  jobs: int) -> Iterator[Any]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_one_thread) as pool:
        yield from pool.map(function, job_args)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)
