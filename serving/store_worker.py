"""The store thread: every store call runs here, one at a time, in the order submitted.

The engine thread never waits on a disk: it submits an operation with a callback and goes on
stepping; the callback runs on this thread when the operation is durable (or failed) and posts
the outcome back. Because operations run in submission order, a read submitted after a write
sees it (a stream spilled and then requested again is loaded after its snapshot is stored).

An operation may first wait (`submit_after`: a take waiting for another server to give the
stream up). The wait runs on a waiter thread of its own, never on the store thread, so other
operations go on meanwhile; the operation is submitted once the wait is over, behind
everything submitted before that.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from compressive_rt.serving.store import StreamStore

log = logging.getLogger("compressive_rt.serving")

Operation = Callable[[StreamStore], Any]
Done = Callable[[Any, BaseException | None], None]


class StoreWorker:
    """Runs `operation(store)` calls on one thread; `done(result, error)` after each. At most
    `waiters` waits (`submit_after`) run at once (one per stream being taken: a server takes
    at most as many streams at once as it has slots)."""

    def __init__(self, store: StreamStore, waiters: int) -> None:
        self.store = store
        self._waiters = ThreadPoolExecutor(max_workers=waiters, thread_name_prefix="ctrt-wait")
        self._queue: queue.SimpleQueue[tuple[Operation, Done] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ctrt-store", daemon=True)
        self._thread.start()

    def submit(self, operation: Operation, done: Done) -> None:
        self._queue.put((operation, done))

    def submit_after(self, wait: Callable[[], None], operation: Operation, done: Done) -> None:
        """`wait()` on a waiter thread, then `submit(operation, done)`; if the wait fails,
        `done(None, error)` instead."""
        def waited() -> None:
            try:
                wait()
            except Exception as exc:  # noqa: BLE001 - handed to the caller's callback
                done(None, exc)
                return
            self.submit(operation, done)

        self._waiters.submit(waited)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            operation, done = item
            try:
                result, error = operation(self.store), None
            except Exception as exc:  # noqa: BLE001 - handed to the caller's callback
                result, error = None, exc
            try:
                done(result, error)
            except Exception:  # a callback must not stop the thread that makes writes durable
                log.exception("a store callback failed")

    def close(self) -> None:
        """Run everything submitted so far (waits included), then close the store."""
        self._waiters.shutdown(wait=True)
        self._queue.put(None)
        self._thread.join()
        self.store.close()
