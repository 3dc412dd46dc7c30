"""Persistent streams: their table, their requests (jobs) and their durability.

A stream's jobs run one at a time in arrival order; the next starts once the previous one is
durable (its log record written, then its answer sent) or failed. A job that fails or is
cancelled leaves its stream at its durable state: the resident copy is dropped and the next
job takes the stream from the store again. So a stream's history is exactly the
concatenation of its acknowledged appends and generations.

Residency: a stream holds a slot while it is used; the least recently used idle one is
spilled (its snapshot stored unless the store's is current) when the admission controller
needs its slot. How streams are held in the store (a store of this server's own, or one
shared with other servers) is the `Ownership` strategy (ownership.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from compressive_rt.errors import RuntimeInputError
from compressive_rt.serving.errors import (
    ApiError,
    bad_request,
    server_error,
    store_failure,
    unknown_stream,
)
from compressive_rt.serving.idempotency import stored_answer
from compressive_rt.serving.jobs import (
    AppendJob,
    AppendRun,
    DeleteJob,
    GenerateJob,
    Generation,
    Job,
    SnapshotInJob,
    SnapshotOutJob,
    StreamEntry,
)
from compressive_rt.serving.ownership import Ownership
from compressive_rt.serving.store import Receipt, StaleVersion, UnknownStream
from compressive_rt.serving.store_worker import Operation
from compressive_rt.serving.stream_requests import still_held
from compressive_rt.serving.tickets import Done, Event, Failed, Started, Ticket

if TYPE_CHECKING:
    from compressive_rt.serving.engine import Engine

log = logging.getLogger("compressive_rt.serving")

READS = (SnapshotOutJob, GenerateJob)  # jobs that answer from the resident copy before a write
UNKNOWN = -1  # the position of a stream on a shared store until this server reads or takes it


class PersistentStreams:
    def __init__(self, core: Engine, ownership: Ownership, positions: dict[str, int]) -> None:
        self.core, self.ownership = core, ownership
        self.entries = {stream_id: StreamEntry(stream_id, position, -1)
                        for stream_id, position in positions.items()}
        self.pending: set[StreamEntry] = set()  # streams that may have jobs waiting
        self.creating = 0  # creates submitted to the store and not yet answered
        core.metrics.max_stored_streams.set(core.settings.max_stored_streams)

    def __len__(self) -> int:
        return len(self.entries)

    def count(self) -> None:
        self.core.metrics.resident_streams.set(len(self.core.residency.resident))
        self.core.metrics.stored_streams.set(len(self.entries))

    def info(self, stream_id: str, resident: bool, position: int) -> dict[str, Any]:
        return {"id": stream_id, "object": "stream", "position": position,
                "state_bytes": self.core.state_bytes, "resident": resident}

    def send(self, ticket: Ticket, event: Event) -> None:
        self.core.loop.send(ticket, event)

    # ---- requests ------------------------------------------------------------------------
    def entry_for(self, stream_id: str) -> StreamEntry:
        entry = self.entries.get(stream_id)
        if entry is None:
            if self.ownership.knows_every_stream:
                raise unknown_stream(stream_id)
            # perhaps created by another server: reading or taking it will tell
            entry = self.entries[stream_id] = StreamEntry(stream_id, UNKNOWN, UNKNOWN)
        return entry

    def queue(self, ticket: Ticket, stream_id: str, job: Job) -> None:
        """Queue a request on the stream (behind its earlier ones). One whose Idempotency-Key
        a queued or running request of the stream has is refused (409)."""
        entry = self.entry_for(stream_id)
        if job.key is not None and any(other.key == job.key
                                       for other in (*entry.jobs, entry.current) if other):
            raise ApiError(409, f"a request with Idempotency-Key {job.key!r} is still running "
                                f"on stream {stream_id}: retry once it has been answered",
                           "conflict_error", "Idempotency-Key", "idempotency_key_in_use")
        job.ticket, job.arrival, job.entry = ticket, self.core.arrival(), entry
        self.core.work[ticket] = job
        entry.jobs.append(job)
        self.pending.add(entry)

    # ---- admission -----------------------------------------------------------------------
    def heads(self) -> list[tuple[int, StreamEntry]]:
        """Streams whose next job may start, with that job's arrival."""
        self.pending = {entry for entry in self.pending if entry.jobs}
        return [(entry.jobs[0].arrival, entry) for entry in self.pending
                if entry.current is None and not entry.loading and not entry.releasing]

    def admit(self, entry: StreamEntry, slots_blocked: bool) -> bool:
        """Start the stream's next job (loading the stream into a granted slot if it is not
        resident); False when it needs a slot and none is granted."""
        head = entry.jobs[0]
        check = self.ownership.check(entry.stream_id) if isinstance(head, READS) else None
        if entry.slot is not None and check is not None:
            self._check_then_start(entry, check)
        elif isinstance(head, DeleteJob) or entry.slot is not None:
            self._start_job(entry)
        elif not slots_blocked and self.core.admission.grant():
            self.core.residency.load(entry)
        else:
            return False
        return True

    def _check_then_start(self, entry: StreamEntry, check: Operation) -> None:
        """A fenced read: start the head job (a snapshot, a generation) on the resident copy
        once the store shows the copy is current; a stale one is dropped and the job, still
        at the head, takes the stream again at the next admission."""
        entry.loading = True  # no other job starts, nor a spill, while the store is read

        def checked(found: Any, error: BaseException | None) -> None:
            entry.loading = False
            if isinstance(error, UnknownStream):
                self.forget(entry)
            elif not entry.jobs:  # the job was cancelled meanwhile
                return
            elif error is not None:
                job = entry.jobs.popleft()
                self.core.work.pop(job.ticket, None)
                self.send(job.ticket, Failed(store_failure(error)))
            elif still_held(self, entry, found[0]):
                self._start_job(entry)

        self.core.loop.store(check, checked)

    def started(self, job: Job) -> None:
        """The job left the queue (its ticket hears it once)."""
        if not job.started:
            job.started = True
            self.send(job.ticket, Started())

    # ---- jobs ----------------------------------------------------------------------------
    def _start_job(self, entry: StreamEntry) -> None:
        job = entry.jobs.popleft()
        entry.current = job
        entry.last_used = time.monotonic()
        if job.key is not None and job.key in entry.receipts:
            self._answer_again(entry, job, entry.receipts[job.key])
            return
        self.started(job)
        try:
            if isinstance(job, AppendJob):
                self.core.appends.add(AppendRun(entry, job.tokens, job))
            elif isinstance(job, GenerateJob):
                generation = Generation(job.ticket, 0, job.prompt, entry, job)
                self.core.generations.start(generation, job.params, entry.slot)
            elif isinstance(job, SnapshotOutJob):
                data = self.core.session.snapshot(entry.slot)
                self._finish_job(entry, job, {"snapshot": data, "position": entry.position})
            elif isinstance(job, SnapshotInJob):
                self._replace(entry, job)
            else:
                self._delete(entry, job)
        except RuntimeInputError as exc:  # refused before anything changed
            self._finish_job(entry, job, error=bad_request(str(exc)))
        except Exception as exc:  # noqa: BLE001 - an engine call failed (a snapshot's commit)
            log.exception("stream %s: a request failed", entry.stream_id)
            self.abandon(entry, job, server_error(f"an engine call failed: {exc}"))

    def _answer_again(self, entry: StreamEntry, job: Job, receipt: Receipt) -> None:
        """A retry of a request that was applied: its stored answer, nothing applied again;
        another body with the key is refused (422) before Started (a streamed answer's
        status)."""
        try:
            events, answer = stored_answer(entry.stream_id, job, receipt)
        except ApiError as exc:
            self._finish_job(entry, job, error=exc)
            return
        self.started(job)
        for event in events:
            self.send(job.ticket, event)
        self._finish_job(entry, job, answer)

    def _finish_job(self, entry: StreamEntry, job: Job, result: dict | None = None,
                    error: ApiError | None = None) -> None:
        entry.current = None
        entry.last_used = time.monotonic()
        self.core.work.pop(job.ticket, None)
        self.send(job.ticket, Failed(error) if error else Done(result or {}))
        self.core.loop.post(lambda: None)  # the stream's next job may start: end a loop's wait

    def abandon(self, entry: StreamEntry, job: Job | None, error: ApiError | None) -> None:
        """A job on the stream failed or was cancelled: drop the resident copy (the store
        holds everything acknowledged) and answer the job with `error`."""
        self.core.appends.drop(entry)
        if not self.core.generations.cancel_on(entry):
            self.core.residency.release(entry)
        entry.loading = False
        if job is not None and entry.current is job:
            entry.current = None
        if job is not None:
            self.core.work.pop(job.ticket, None)
            if error is not None:
                self.send(job.ticket, Failed(error))

    def cancel(self, job: Job) -> bool:
        """The client left or its time ran out: a queued job is dropped; a running append or
        generation is stopped (its stream falls back to its durable state); one whose write
        is under way completes, acknowledged to nobody. True in that last case: the job may
        have been applied."""
        entry = job.entry
        if job in entry.jobs:
            entry.jobs.remove(job)
        elif isinstance(job, (AppendJob, GenerateJob)) and (
                self.core.appends.on(entry) or self.core.generations.on(entry)):
            self.abandon(entry, job, None)
        return job.writing

    def stop(self, error: ApiError) -> None:
        """Shutdown: every queued job fails with `error`."""
        for entry in self.entries.values():
            for job in entry.jobs:
                self.core.work.pop(job.ticket, None)
                self.send(job.ticket, Failed(error))
            entry.jobs.clear()

    def appended(self, run: AppendRun) -> None:
        """A run's last chunk is fed: a replay makes the stream ready; an append is logged."""
        entry = run.entry
        if run.job is None:
            entry.loading = False
            return
        self.core.metrics.appended_tokens.inc(len(run.tokens))
        result = {"bits": run.bits, "predicted_bytes": run.predicted,
                  "bits_per_byte": run.bits / run.predicted if run.predicted else None}
        self.log(entry, run.job, run.tokens.astype(np.uint8).tobytes(), [], result)

    # ---- durability ----------------------------------------------------------------------
    def log(self, entry: StreamEntry, job: Job, tokens: bytes, events: list[Event],
            result: dict[str, Any]) -> None:
        """Make the tokens a job fed durable (with its receipt, if it has a key), then
        acknowledge the job: its `events`, then Done with `result` and the new position.

        Tokens that take the stream --snapshot-every or more past its stored snapshot are
        written with a new snapshot in the same transaction (the log it covers dropped), so a
        restart never replays more than that many."""
        start, version = entry.position, entry.claim.version
        end = start + len(tokens)
        answer = {**result, "position": end}
        receipt = None if job.key is None else Receipt(job.key, job.digest, json.dumps(answer))
        keep = self.core.settings.idempotency_keys
        snapshot = self._checkpoint(entry) \
            if end - entry.snapshot_position >= self.core.settings.snapshot_every else None
        job.writing = True

        def written(_: Any, error: BaseException | None) -> None:
            if error is not None:
                log.error("stream %s: a log write failed: %s", entry.stream_id, error)
                if isinstance(error, StaleVersion):
                    self.core.residency.lost(entry.stream_id)
                self.abandon(entry, job, store_failure(error))
                return
            entry.position = end
            if snapshot is not None:
                entry.snapshot_position = end
            if receipt is not None:
                entry.receipts[receipt.key] = receipt
                while len(entry.receipts) > keep:
                    del entry.receipts[next(iter(entry.receipts))]
            for event in events:
                self.send(job.ticket, event)
            self._finish_job(entry, job, answer)

        self.core.loop.store(lambda store: store.append(
            entry.stream_id, version, start, tokens, receipt, keep, snapshot), written)

    def store_snapshot(self, entry: StreamEntry, data: bytes, position: int,
                        then: Callable[[BaseException | None], None] | None = None) -> None:
        """Store `data` as the stream's snapshot at `position` (its log up to there dropped);
        `then(error)` afterwards."""
        stream_id, version = entry.stream_id, entry.claim.version

        def stored(_: Any, error: BaseException | None) -> None:
            if error is None:
                entry.snapshot_position = position
            if then is not None:
                then(error)
            elif error is not None:
                log.error("stream %s: a snapshot write failed (%s); it reloads from its log",
                          stream_id, error)

        self.core.loop.store(
            lambda store: store.put_snapshot(stream_id, version, position, data), stored)

    def _checkpoint(self, entry: StreamEntry) -> bytes | None:
        """The resident stream's snapshot (every token fed so far), or None if it failed (its
        tokens are logged instead: the store still holds everything)."""
        try:
            return self.core.session.snapshot(entry.slot)
        except Exception:  # noqa: BLE001 - an engine call (the commit) failed
            log.exception("stream %s: its checkpoint failed; its log grows until the next",
                          entry.stream_id)
            return None

    def _replace(self, entry: StreamEntry, job: SnapshotInJob) -> None:
        """An uploaded snapshot: checked by restoring it over the stream (a refusal changes
        nothing), then stored as the stream's whole durable state."""
        self.core.session.restore(job.data, entry.slot)
        position = self.core.session.position(entry.slot)
        job.writing = True

        def stored(error: BaseException | None) -> None:
            if error is not None:
                self.abandon(entry, job, store_failure(error))
                return
            entry.position = position
            self._finish_job(entry, job, {"id": entry.stream_id, "object": "stream",
                                          "position": position})

        self.store_snapshot(entry, job.data, position, stored)

    def _delete(self, entry: StreamEntry, job: DeleteJob) -> None:
        job.writing = True

        def deleted(_: Any, error: BaseException | None) -> None:
            if error is not None and not isinstance(error, UnknownStream):
                self._finish_job(entry, job, error=store_failure(error))
                return
            self.forget(entry)
            self._finish_job(entry, job, {"id": entry.stream_id, "object": "stream",
                                          "deleted": True})

        self.core.loop.store(lambda store: store.delete(entry.stream_id), deleted)

    def forget(self, entry: StreamEntry) -> None:
        """The stream is gone from the store: free its slot, refuse its queued jobs."""
        self.core.residency.release(entry)
        self.entries.pop(entry.stream_id, None)
        for later in entry.jobs:
            self.core.work.pop(later.ticket, None)
            self.send(later.ticket, Failed(unknown_stream(entry.stream_id)))
        entry.jobs.clear()
        self.count()
