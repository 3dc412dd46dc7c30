"""The store thread: every store call runs here, one at a time, in the order submitted.

The engine thread never waits on a disk: it submits an operation with a callback and goes on
stepping; the callback runs on this thread when the operation is durable (or failed) and posts
the outcome back. Because operations run in submission order, a read submitted after a write
sees it (a stream spilled and then requested again is loaded after its snapshot is stored).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from compressive_rt.serving.store import StreamStore

log = logging.getLogger("compressive_rt.serving")

Operation = Callable[[StreamStore], Any]
Done = Callable[[Any, BaseException | None], None]


class StoreWorker:
    """Runs `operation(store)` calls on one thread; `done(result, error)` after each."""

    def __init__(self, store: StreamStore) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[tuple[Operation, Done] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ctrt-store", daemon=True)
        self._thread.start()

    def submit(self, operation: Operation, done: Done) -> None:
        self._queue.put((operation, done))

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
        """Run everything submitted so far, then close the store."""
        self._queue.put(None)
        self._thread.join()
        self.store.close()
