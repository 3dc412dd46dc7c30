"""The engine thread's inbox and outbox, and its door to the store thread.

Work comes in through the inbox (`post`, from any thread): requests from the event loop and
the answers of store operations. Events for requests go out through the outbox (`send`),
held until the end of a loop turn and then handed to the event loop in one call (one wake-up
of the loop per step, not one per token). A store operation (`store`) runs on the store
thread and its answer comes back through the inbox, so every request is answered by the
engine thread alone, after its bookkeeping.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from compressive_rt.serving.store import StreamStore
from compressive_rt.serving.store_worker import StoreWorker
from compressive_rt.serving.tickets import Event, Ticket, deliver

Answer = Callable[[Any, BaseException | None], None]  # (result, error), on the engine thread


class EngineLoop:
    def __init__(self, store: StreamStore, waiters: int) -> None:
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._outbox: list[tuple[Ticket, Event]] = []
        self._store = StoreWorker(store, waiters)
        self.store_calls = 0  # store operations whose answer has not been handled yet

    def post(self, work: Callable[[], None]) -> None:
        """Run `work` on the engine thread (from any thread)."""
        self._inbox.put(work)

    def send(self, ticket: Ticket, event: Event) -> None:
        """An event for the request's handler, delivered at the next `flush`."""
        self._outbox.append((ticket, event))

    def flush(self) -> None:
        if self._outbox:
            batch, self._outbox = self._outbox, []
            deliver(batch)

    def store(self, operation: Callable[[StreamStore], Any], answer: Answer,
              wait: Callable[[], None] | None = None) -> None:
        """Run `operation(store)` on the store thread (in submission order; with `wait`, once
        `wait()` has returned on a waiter thread); `answer(result, error)` then runs on the
        engine thread."""
        self.store_calls += 1

        def answered(result: Any, error: BaseException | None) -> None:
            self.post(lambda: self._answered(answer, result, error))

        if wait is None:
            self._store.submit(operation, answered)
        else:
            self._store.submit_after(wait, operation, answered)

    def _answered(self, answer: Answer, result: Any, error: BaseException | None) -> None:
        self.store_calls -= 1
        answer(result, error)

    def drain(self, block: bool) -> None:
        """Run what the inbox holds; with `block`, wait for at least one item first."""
        try:
            work = self._inbox.get() if block else self._inbox.get_nowait()
            while True:
                work()
                work = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def close(self) -> None:
        """Run every store operation submitted so far, then close the store (blocking)."""
        self._store.close()
