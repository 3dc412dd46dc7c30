"""The engine thread: the one owner of the Session, the generation scheduler and the persistent
streams. The event loop hands it work through `submit` (a queue); it answers through each
request's Ticket; store writes go to the store thread, whose answers come back through the
same queue. It never waits on the loop or a disk.

Each loop turn: take what the queue holds, admit waiting work in arrival order (spilling the
least recently used idle stream when every slot is taken), then, if anything runs, one
generation step and one chunk of every running append (so a long append never stalls
decoding, and never holds more than [L, V] logits); if nothing can run, wait for the queue.

Persistent streams: a stream's requests run one at a time in arrival order; the next starts
once the previous one is durable (its log record fsync'ed, then its answer sent) or failed. A
request that fails or is cancelled leaves its stream at its durable state: the resident copy
is dropped and the next request takes the stream from the store again. So a stream's history
is exactly the concatenation of its acknowledged appends and generations.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from compressive_rt.errors import RuntimeInputError
from compressive_rt.runtime.backends.base import NUMPY_DTYPES
from compressive_rt.runtime.buffers import FILL_INPUT
from compressive_rt.runtime.scheduler import Scheduler, TokenEvent
from compressive_rt.runtime.score import target_bits
from compressive_rt.runtime.session import EngineCallError, Session
from compressive_rt.serving.errors import ApiError, bad_request, server_error, unknown_stream
from compressive_rt.serving.jobs import (
    AppendJob,
    AppendRun,
    CompletionRequest,
    DeleteJob,
    GenerateJob,
    Generation,
    GenerationParams,
    Job,
    SnapshotInJob,
    SnapshotOutJob,
    StreamEntry,
)
from compressive_rt.serving.metrics import Metrics
from compressive_rt.serving.settings import ServeSettings
from compressive_rt.serving.store import (
    StaleVersion,
    StoreError,
    StoreFull,
    StreamStore,
    UnknownStream,
)
from compressive_rt.serving.store_worker import StoreWorker
from compressive_rt.serving.tickets import (
    Done,
    Event,
    Failed,
    Finished,
    Started,
    Ticket,
    Token,
    deliver,
)

log = logging.getLogger("compressive_rt.serving")

FAILED_STEPS = 3  # generation steps failing in a row before their requests fail


def store_failure(error: BaseException) -> ApiError:
    """The answer to a request whose store operation failed."""
    if isinstance(error, StaleVersion):
        return ApiError(409, str(error), "conflict_error", code="stream_taken")
    if isinstance(error, UnknownStream):
        return ApiError(404, str(error), "not_found_error", code="stream_not_found")
    if isinstance(error, StoreFull):
        return ApiError(507, str(error), "server_error", code="store_full", bound="store_full")
    return server_error(f"the stream store failed: {error}", 503)


def row_specs(session: Session) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of one stream's row of every state tensor (what a snapshot holds)."""
    buffers = session.buffers
    return {name: (buffers.row_shape(name), np.dtype(NUMPY_DTYPES[buffers.specs[name].dtype]))
            for name in (*buffers.row_state, FILL_INPUT)}


def state_bytes(session: Session) -> int:
    """Bytes of one stream's state: constant in its history."""
    return sum(math.prod(shape) * dtype.itemsize for shape, dtype in row_specs(session).values())


class Engine:
    """Owns `session` on its own thread; see the module doc."""

    def __init__(self, session: Session, store: StreamStore, settings: ServeSettings,
                 metrics: Metrics) -> None:
        self.session, self.settings, self.metrics = session, settings, metrics
        self.state_bytes = state_bytes(session)
        self.streams = {stream_id: StreamEntry(stream_id, position, -1)
                        for stream_id, position in store.positions().items()}
        self.store = StoreWorker(store)
        self.scheduler = Scheduler(session)
        self._step_failures = 0  # generation steps failed in a row
        self._releasing: dict[int, StreamEntry] = {}  # cancelled request -> its kept stream
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._arrivals = itertools.count()
        self._completions: deque[CompletionRequest] = deque()  # choices waiting for a slot
        self._generations: dict[int, Generation] = {}  # scheduler request id -> generation
        self._appends: list[AppendRun] = []
        self._work: dict[Ticket, Any] = {}  # ticket -> its CompletionRequest or Job
        self._outbox: list[tuple[Ticket, Event]] = []  # events of this loop turn (_send)
        self._pending: set[StreamEntry] = set()  # streams that may have jobs waiting
        self._resident: set[StreamEntry] = set()  # streams holding a slot
        self._stopping = False
        self.ready = False
        self.failed = False  # the engine thread died of a bug: every request gets a 503
        self._thread = threading.Thread(target=self._run, name="ctrt-engine", daemon=True)

    # ---- the event loop's side ---------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self.ready = True

    def submit(self, ticket: Ticket, method: Callable[..., None], *args: Any) -> None:
        """Run `method(ticket, *args)` on the engine thread; an ApiError it raises becomes the
        ticket's Failed event (as does everything once the engine thread has failed)."""
        if self.failed:
            ticket.post(Failed(server_error("the engine failed; see the server log", 503)))
            return
        self._inbox.put(lambda: self._guarded(ticket, method, *args))

    def cancel(self, ticket: Ticket) -> None:
        """The client left or its time ran out: let go of the request (from any thread)."""
        self._inbox.put(lambda: self._cancel(ticket))

    def stop(self) -> None:
        """Cancel what is left, wait for pending writes, spill every resident stream to the
        store, and end the thread (blocking: call it off the event loop)."""
        self.ready = False
        self._inbox.put(self._begin_stop)
        self._thread.join()
        self.store.close()

    # ---- requests (run on the engine thread) ---------------------------------------------
    def complete(self, ticket: Ticket, prompts: list[np.ndarray],
                 params: GenerationParams) -> None:
        request = CompletionRequest(ticket, prompts, params, next(self._arrivals))
        self._work[ticket] = request
        self._completions.append(request)

    def create_stream(self, ticket: Ticket) -> None:
        stream_id = f"st_{secrets.token_hex(12)}"

        def created(_: Any, error: BaseException | None) -> None:
            if error is None:
                self._post(lambda: self._created(stream_id))
            ticket.post(Failed(store_failure(error)) if error else
                        Done(self.stream_info(stream_id, resident=False, position=0)))

        self._store(lambda store: store.create(stream_id), created)

    def _created(self, stream_id: str) -> None:
        self.streams[stream_id] = StreamEntry(stream_id, 0, 0)
        self._count_streams()

    def describe_stream(self, ticket: Ticket, stream_id: str) -> None:
        entry = self._entry(stream_id)
        resident = entry.slot is not None
        self._send(ticket, Done(self.stream_info(stream_id, resident, entry.position)))

    def list_streams(self, ticket: Ticket) -> None:
        self._send(ticket, Done({"object": "list", "data": [
            self.stream_info(entry.stream_id, entry.slot is not None, entry.position)
            for entry in self.streams.values()]}))

    def stream_info(self, stream_id: str, resident: bool, position: int) -> dict[str, Any]:
        return {"id": stream_id, "object": "stream", "position": position,
                "state_bytes": self.state_bytes, "resident": resident}

    def stream_job(self, ticket: Ticket, stream_id: str, job: Job) -> None:
        """Queue a request on a persistent stream (behind the stream's earlier ones)."""
        entry = self._entry(stream_id)
        job.arrival, job.entry = next(self._arrivals), entry
        self._work[ticket] = job
        entry.jobs.append(job)
        self._pending.add(entry)

    def _entry(self, stream_id: str) -> StreamEntry:
        entry = self.streams.get(stream_id)
        if entry is None:
            raise unknown_stream(stream_id)
        return entry

    # ---- the loop ------------------------------------------------------------------------
    def _post(self, fn: Callable[[], None]) -> None:
        self._inbox.put(fn)

    def _send(self, ticket: Ticket, event: Event) -> None:
        """An event for the event loop: held until the end of the loop turn (or the next store
        submission), then the turn's events go over in one call_soon_threadsafe (one wake-up of
        the loop per step, not one per token)."""
        self._outbox.append((ticket, event))

    def _flush(self) -> None:
        if self._outbox:
            batch, self._outbox = self._outbox, []
            deliver(batch)

    def _store(self, operation: Callable[[StreamStore], Any],
               done: Callable[[Any, BaseException | None], None]) -> None:
        """Submit to the store thread; events sent so far go first, so that what the store
        thread posts when the write is durable comes after them on the loop."""
        self._flush()
        self.store.submit(operation, done)

    def _guarded(self, ticket: Ticket, method: Callable[..., None], *args: Any) -> None:
        if self._stopping:
            self._send(ticket, Failed(server_error("the server is shutting down", 503)))
            return
        try:
            method(ticket, *args)
        except ApiError as exc:
            self._send(ticket, Failed(exc))

    def _run(self) -> None:
        try:
            while not (self._stopping and self._quiet()):
                self._drain(block=False)
                if not self._stopping:
                    self._admit()
                if not (self._generating() or self._appends):
                    # nothing can run until a request or a store answer comes: wait for it
                    self._flush()
                    self._drain(block=True)
                    continue
                if self._generating():
                    self._step_generation()
                if self._appends:
                    self._step_appends()
                self._flush()
            self._flush()
            self._spill_all()
        except Exception:  # a bug: answer everyone rather than hang them
            log.exception("the engine thread failed")
            self.ready, self.failed = False, True
            self._drain(block=False)  # requests that came meanwhile are answered below too
            for ticket in list(self._work):
                ticket.post(Failed(server_error("the engine failed; see the server log")))

    def _drain(self, block: bool) -> None:
        try:
            item = self._inbox.get() if block else self._inbox.get_nowait()
            while True:
                item()
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _generating(self) -> bool:
        return bool(self.scheduler.waiting or self.scheduler.running)

    def _quiet(self) -> bool:
        """Nothing is running and no store answer is due (shutdown waits for this)."""
        return not (self._generating() or self._appends or self._releasing or any(
            entry.current is not None or entry.loading for entry in self.streams.values()))

    def _count_streams(self) -> None:
        self.metrics.resident_streams.set(len(self._resident))
        self.metrics.stored_streams.set(len(self.streams))

    # ---- admission -----------------------------------------------------------------------
    def _admit(self) -> None:
        """Start waiting work in arrival order. Work that needs a free slot takes one (spilling
        an idle stream if need be); once one cannot, later work needing a slot waits too."""
        self._pending = {entry for entry in self._pending if entry.jobs}
        heads = [(entry.jobs[0].arrival, entry) for entry in self._pending
                 if entry.current is None and not entry.loading and not entry.releasing]
        heads += [(request.arrival, request) for request in self._completions]
        slots_blocked = False
        for _, item in sorted(heads, key=lambda head: head[0]):
            if isinstance(item, CompletionRequest):
                while item.submitted < len(item.prompts) and not slots_blocked:
                    if not self._make_room():
                        slots_blocked = True
                        break
                    self._submit_choice(item)
                if item.submitted == len(item.prompts):
                    self._completions.remove(item)
                continue
            entry, job = item, item.jobs[0]
            if isinstance(job, DeleteJob) or entry.slot is not None:
                self._start_job(entry)
            elif not slots_blocked and self._make_room():
                self._load(entry)
            else:
                slots_blocked = True

    def _make_room(self) -> bool:
        """True when a slot is free, spilling the least recently used idle stream if none is."""
        session = self.session
        if len(session.streams) + self.scheduler.waiting_for_stream < session.max_streams:
            return True
        idle = [entry for entry in self._resident if entry.idle]
        if not idle:
            return False
        self._spill(min(idle, key=lambda entry: entry.last_used))
        return True

    def _started(self, job: Job) -> None:
        """The job left the queue (its ticket hears it once)."""
        if not job.started:
            job.started = True
            self._send(job.ticket, Started())

    # ---- completions and generation -----------------------------------------------------
    def _submit_choice(self, request: CompletionRequest) -> None:
        index = request.submitted
        if index == 0:
            self._send(request.ticket, Started())
        generation = Generation(request.ticket, index, request.prompts[index])
        request.submitted += 1
        request.generations.append(generation)
        self._start_generation(generation, request.params, None)

    def _start_generation(self, generation: Generation, params: GenerationParams,
                          stream: int | None) -> None:
        def on_token(event: TokenEvent) -> None:
            self._on_token(generation, event)

        generation.request_id = self.scheduler.submit(
            generation.prompt, params.max_tokens, params.sampling, params.stop, on_token, stream)
        self._generations[generation.request_id] = generation

    def _on_token(self, generation: Generation, event: TokenEvent) -> None:
        if generation.request_id not in self._generations:  # dropped (cancelled) meanwhile
            return
        self.metrics.generated_tokens.inc()
        if not event.finished:
            self._send(generation.ticket, Token(generation.index, event.token))
            return
        result = self.scheduler.result(generation.request_id)
        del self._generations[generation.request_id]
        finished = Finished(generation.index, result.finish_reason, result.tokens, event.token)
        if generation.entry is None:
            self._send(generation.ticket, finished)
            request = self._work.get(generation.ticket)
            if request is None:
                return
            request.finished += 1
            if request.finished == len(request.prompts):
                del self._work[generation.ticket]
                self._send(generation.ticket, Done())
            return
        fed = generation.prompt.astype(np.uint8).tobytes() + bytes(result.tokens)
        self._log(generation.entry, generation.job, fed, [finished], {})

    def _step_generation(self) -> None:
        """One scheduler step. A failed engine call loses no token (the scheduler's failure
        semantics), so the step is retried on the next turn; after FAILED_STEPS failures in a
        row every generation fails (500) rather than waiting for its timeout."""
        started = time.perf_counter()
        try:
            self.scheduler.step()
            self._step_failures = 0
        except EngineCallError as exc:
            self._step_failures += 1
            log.error("a generation step failed (%d in a row): %s", self._step_failures, exc)
            if self._step_failures >= FAILED_STEPS:
                self._fail_generations(server_error(f"engine calls keep failing: {exc}"))
        except Exception as exc:  # noqa: BLE001 - the scheduler refused its own state: a bug
            log.exception("a generation step failed")
            self._fail_generations(server_error(f"a generation step failed: {exc}"))
        self.metrics.engine_step.labels("generate").observe(time.perf_counter() - started)
        for completion in self.scheduler.take_finished():
            entry = self._releasing.pop(completion.request_id, None)
            if entry is not None:  # a cancelled request's last token is in its stream now
                entry.releasing = False
                self._release(entry)

    def _fail_generations(self, error: ApiError) -> None:
        self._step_failures = 0
        generations = list(self._generations.values())
        self.scheduler.close()  # ends them all now: no kept stream waits for a feed
        for generation in generations:
            self._drop_generation(generation, error)

    def _drop_generation(self, generation: Generation, error: ApiError | None) -> None:
        """End a running generation; a persistent stream falls back to its durable state."""
        self._generations.pop(generation.request_id, None)
        self.scheduler.cancel(generation.request_id)
        if generation.entry is not None:
            self._abandon(generation.entry, generation.job, error)
            return
        request = self._work.pop(generation.ticket, None)
        if request is None:
            return
        for other in request.generations:
            if other is not generation and other.request_id in self._generations:
                self.scheduler.cancel(other.request_id)
                del self._generations[other.request_id]
        if request in self._completions:
            self._completions.remove(request)
        if error is not None:
            self._send(generation.ticket, Failed(error))

    # ---- persistent streams --------------------------------------------------------------
    def _start_job(self, entry: StreamEntry) -> None:
        job = entry.jobs.popleft()
        entry.current = job
        entry.last_used = time.monotonic()
        self._started(job)
        try:
            if isinstance(job, AppendJob):
                self._appends.append(AppendRun(entry, job.tokens, job))
            elif isinstance(job, GenerateJob):
                generation = Generation(job.ticket, 0, job.prompt, entry, job)
                self._start_generation(generation, job.params, entry.slot)
            elif isinstance(job, SnapshotOutJob):
                data = self.session.snapshot(entry.slot)
                self._finish_job(entry, job, {"snapshot": data, "position": entry.position})
            elif isinstance(job, SnapshotInJob):
                self._replace(entry, job)
            else:
                self._delete(entry, job)
        except RuntimeInputError as exc:  # refused before anything changed
            self._finish_job(entry, job, error=bad_request(str(exc)))
        except Exception as exc:  # noqa: BLE001 - an engine call failed (a snapshot's commit)
            log.exception("stream %s: a request failed", entry.stream_id)
            self._abandon(entry, job, server_error(f"an engine call failed: {exc}"))

    def _finish_job(self, entry: StreamEntry, job: Job, result: dict | None = None,
                    error: ApiError | None = None) -> None:
        entry.current = None
        entry.last_used = time.monotonic()
        self._work.pop(job.ticket, None)
        self._send(job.ticket, Failed(error) if error else Done(result or {}))
        self._post(lambda: None)  # the stream's next job may start: end the loop's wait

    def _abandon(self, entry: StreamEntry, job: Job | None, error: ApiError | None) -> None:
        """A request on the stream failed or was cancelled: drop the resident copy (the store
        holds everything acknowledged) and answer the request with `error`."""
        self._appends = [run for run in self._appends if run.entry is not entry]
        held = False
        for generation in [g for g in self._generations.values() if g.entry is entry]:
            del self._generations[generation.request_id]
            self.scheduler.cancel(generation.request_id)
            if self.scheduler.result(generation.request_id).finish_reason is None:
                # the scheduler feeds the token it sampled first: release after that step
                self._releasing[generation.request_id] = entry
                entry.releasing = held = True
        if not held:
            self._release(entry)
        entry.loading = False
        if job is not None and entry.current is job:
            entry.current = None
        if job is not None:
            self._work.pop(job.ticket, None)
            if error is not None:
                self._send(job.ticket, Failed(error))

    def _log(self, entry: StreamEntry, job: Job, tokens: bytes, events: list,
             result: dict[str, Any]) -> None:
        """Make the tokens a job fed durable, then acknowledge the job: its `events`, then
        Done with `result` and the new position."""
        start, version = entry.position, entry.version

        def written(_: Any, error: BaseException | None) -> None:
            # bookkeeping first: the client's next request queues behind it
            self._post(lambda: self._acknowledged(entry, job, len(tokens), error))
            if error is None:
                for event in events:
                    job.ticket.post(event)
                job.ticket.post(Done({**result, "position": start + len(tokens)}))

        self._store(lambda store: store.append(entry.stream_id, version, start, tokens),
                          written)

    def _acknowledged(self, entry: StreamEntry, job: Job, count: int,
                      error: BaseException | None) -> None:
        if error is not None:
            log.error("stream %s: a log write failed: %s", entry.stream_id, error)
            self._abandon(entry, job, store_failure(error))
            return
        entry.position += count
        entry.current = None
        entry.last_used = time.monotonic()
        self._work.pop(job.ticket, None)
        if entry.slot is not None and \
                entry.position - entry.snapshot_position >= self.settings.snapshot_every:
            self._checkpoint(entry)

    def _checkpoint(self, entry: StreamEntry) -> None:
        data, position, version = self.session.snapshot(entry.slot), entry.position, entry.version

        def stored(_: Any, error: BaseException | None) -> None:
            if error is None:
                self._post(lambda: setattr(entry, "snapshot_position", position))
            else:
                log.error("stream %s: a snapshot write failed: %s", entry.stream_id, error)

        self._store(
            lambda store: store.put_snapshot(entry.stream_id, version, position, data), stored)

    def _replace(self, entry: StreamEntry, job: SnapshotInJob) -> None:
        """An uploaded snapshot: checked by restoring it over the stream (a refusal changes
        nothing), then stored as the stream's whole durable state."""
        self.session.restore(job.data, entry.slot)
        position, version = self.session.position(entry.slot), entry.version

        def stored(_: Any, error: BaseException | None) -> None:
            self._post(lambda: self._replaced(entry, job, position, error))

        self._store(
            lambda store: store.put_snapshot(entry.stream_id, version, position, job.data), stored)

    def _replaced(self, entry: StreamEntry, job: SnapshotInJob, position: int,
                  error: BaseException | None) -> None:
        if error is not None:
            self._abandon(entry, job, store_failure(error))
            return
        entry.position = entry.snapshot_position = position
        self._finish_job(entry, job, {"id": entry.stream_id, "object": "stream",
                                      "position": position})

    def _delete(self, entry: StreamEntry, job: DeleteJob) -> None:
        def deleted(_: Any, error: BaseException | None) -> None:
            self._post(lambda: self._deleted(entry, job, error))

        self._store(lambda store: store.delete(entry.stream_id), deleted)

    def _deleted(self, entry: StreamEntry, job: DeleteJob, error: BaseException | None) -> None:
        if error is not None and not isinstance(error, UnknownStream):
            self._finish_job(entry, job, error=store_failure(error))
            return
        self._forget_stream(entry)
        self._finish_job(entry, job, {"id": entry.stream_id, "object": "stream",
                                      "deleted": True})

    def _forget_stream(self, entry: StreamEntry) -> None:
        """The stream is gone from the store: free its slot, refuse its queued jobs."""
        self._release(entry)
        self.streams.pop(entry.stream_id, None)
        for later in entry.jobs:
            self._work.pop(later.ticket, None)
            self._send(later.ticket, Failed(unknown_stream(entry.stream_id)))
        entry.jobs.clear()
        self._count_streams()

    def _release(self, entry: StreamEntry) -> None:
        """Free the stream's slot without writing anything."""
        if entry.slot is not None:
            self.session.remove_stream(entry.slot)
        entry.slot = entry.version = None
        self._resident.discard(entry)
        self._count_streams()

    # ---- spill and load ------------------------------------------------------------------
    def _spill(self, entry: StreamEntry) -> None:
        """Write an idle resident stream to the store (if the store's copy is behind) and free
        its slot. Until the write is done the store thread's order keeps a reload behind it."""
        version, position = entry.version, entry.position
        self.metrics.spills.inc()
        try:
            data = self.session.snapshot(entry.slot) \
                if entry.snapshot_position != position else None
        except Exception:  # noqa: BLE001 - the store still holds every acknowledged token
            log.exception("stream %s: its snapshot failed; it reloads from its log",
                          entry.stream_id)
            data = None
        self._release(entry)
        if data is None:
            return

        def stored(_: Any, error: BaseException | None) -> None:
            if error is None:
                self._post(lambda: setattr(entry, "snapshot_position", position))
            else:
                log.error("stream %s: its spill failed (%s); it reloads from its log",
                          entry.stream_id, error)

        self._store(
            lambda store: store.put_snapshot(entry.stream_id, version, position, data), stored)

    def _spill_all(self) -> None:
        for entry in list(self._resident):
            self._spill(entry)

    def _load(self, entry: StreamEntry) -> None:
        """Take the stream from the store into a fresh slot (restore its snapshot, replay its
        log); its head job starts when that is done."""
        self._started(entry.jobs[0])
        entry.loading = True
        entry.slot = self.session.add_stream()
        self._resident.add(entry)
        self._count_streams()
        self.metrics.loads.inc()

        def taken(stored: Any, error: BaseException | None) -> None:
            self._post(lambda: self._taken(entry, stored, error))

        self._store(lambda store: store.take(entry.stream_id), taken)

    def _taken(self, entry: StreamEntry, stored: Any, error: BaseException | None) -> None:
        if error is None and not self._stopping:
            entry.version = stored.version
            entry.position, entry.snapshot_position = stored.position, stored.snapshot_position
            try:
                if stored.snapshot is not None:
                    self.session.restore(stored.snapshot, entry.slot)
            except RuntimeInputError as exc:
                error = StoreError(f"the stored snapshot of stream {entry.stream_id} cannot be "
                                   f"restored: {exc}")
            else:
                if stored.tail:
                    tokens = np.frombuffer(stored.tail, dtype=np.uint8).astype(np.int32)
                    self._appends.append(AppendRun(entry, tokens, None))
                else:
                    entry.loading = False
                return
        self._abandon(entry, None, None)
        if isinstance(error, UnknownStream):
            self._forget_stream(entry)
        elif error is not None and entry.jobs:  # the job that asked for the load fails
            job = entry.jobs.popleft()
            self._work.pop(job.ticket, None)
            self._send(job.ticket, Failed(store_failure(error)))

    # ---- appends -------------------------------------------------------------------------
    def _step_appends(self) -> None:
        """One chunk of every running append, in one feed: each up to its stream's next
        segment boundary. Bits of a chunk's first byte come from the stream's last logits."""
        session, seg_len = self.session, self.session.dims.seg_len
        feed, previous = {}, {}
        for run in self._appends:
            slot = run.entry.slot
            count = min(len(run.tokens) - run.done, seg_len - session.position(slot) % seg_len)
            feed[slot] = run.tokens[run.done:run.done + count]
            if run.job is not None:
                try:
                    previous[slot] = session.last_logits(slot)[None].copy()  # [1, V]
                except RuntimeInputError:  # never fed: its first byte has no prediction
                    pass
        scoring = any(run.job is not None for run in self._appends)
        started = time.perf_counter()
        try:
            logits = session.feed(feed, want_logits=scoring)
        except Exception as exc:  # noqa: BLE001 - an engine call failed: fail these appends
            log.exception("an append step failed")
            for run in list(self._appends):
                self._abandon(run.entry, run.job or run.entry.current,
                              server_error(f"an engine call failed: {exc}"))
            return
        self.metrics.engine_step.labels("append").observe(time.perf_counter() - started)
        for run in list(self._appends):
            chunk = feed[run.entry.slot]
            if run.job is not None:
                if run.entry.slot in previous:
                    run.bits += target_bits(previous[run.entry.slot], chunk[:1])
                    run.predicted += 1
                run.bits += target_bits(logits[run.entry.slot][:-1], chunk[1:])
                run.predicted += len(chunk) - 1
            run.done += len(chunk)
            if run.done == len(run.tokens):
                self._appends.remove(run)
                self._appended(run)

    def _appended(self, run: AppendRun) -> None:
        entry = run.entry
        if run.job is None:  # the log replay after a load is done
            entry.loading = False
            return
        self.metrics.appended_tokens.inc(len(run.tokens))
        result = {"bits": run.bits, "predicted_bytes": run.predicted,
                  "bits_per_byte": run.bits / run.predicted if run.predicted else None}
        self._log(entry, run.job, run.tokens.astype(np.uint8).tobytes(), [], result)

    # ---- cancel and stop -----------------------------------------------------------------
    def _cancel(self, ticket: Ticket) -> None:
        ticket.cancelled = True
        work = self._work.pop(ticket, None)
        if isinstance(work, CompletionRequest):
            if work in self._completions:
                self._completions.remove(work)
            for generation in work.generations:
                if generation.request_id in self._generations:
                    self.scheduler.cancel(generation.request_id)
                    del self._generations[generation.request_id]
            return
        if work is None:
            return
        entry = work.entry
        if work in entry.jobs:
            entry.jobs.remove(work)
        elif isinstance(work, (AppendJob, GenerateJob)) and not self._awaiting_write(entry):
            self._abandon(entry, work, None)
        # otherwise its write is under way: it completes, acknowledged to nobody

    def _awaiting_write(self, entry: StreamEntry) -> bool:
        running = any(run.entry is entry for run in self._appends) or \
            any(g.entry is entry for g in self._generations.values())
        return not running

    def _begin_stop(self) -> None:
        """Shutdown: everything not yet durable is cancelled (uvicorn's grace period for
        in-flight requests is over); the loop then waits for pending writes and spills."""
        self._stopping = True
        error = server_error("the server is shutting down", 503)
        for request in list(self._completions):
            self._work.pop(request.ticket, None)
            self._send(request.ticket, Failed(error))
        self._completions.clear()
        for generation in list(self._generations.values()):
            self._drop_generation(generation, error)
        for run in list(self._appends):
            if run.job is not None:
                self._abandon(run.entry, run.job, error)
        for entry in self.streams.values():
            for job in entry.jobs:
                self._work.pop(job.ticket, None)
                self._send(job.ticket, Failed(error))
            entry.jobs.clear()
