"""What the engine thread keeps per persistent stream and per request (the serving core's
data: engine.py and its parts)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from compressive_rt.runtime.sampling import Sampling
from compressive_rt.serving.store import Claim, Receipt
from compressive_rt.serving.tickets import Ticket


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    sampling: Sampling
    stop: tuple[bytes, ...]


@dataclass(eq=False)
class Job:
    """A request on a persistent stream; jobs of one stream run one at a time, in arrival
    order, and the next starts only once this one is durable (or failed)."""

    ticket: Ticket | None = None  # set when the engine queues it
    arrival: int = -1
    started: bool = False
    entry: StreamEntry | None = None  # set when the engine queues it
    writing: bool = False  # its store write is under way: cancelled now, it may still apply
    key: str | None = None  # its Idempotency-Key (appends and generations)
    digest: str = ""  # its request body's, with the key


@dataclass(eq=False)
class AppendJob(Job):
    tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # [n] int32


@dataclass(eq=False)
class GenerateJob(Job):
    prompt: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # [P] int32
    params: GenerationParams | None = None


@dataclass(eq=False)
class SnapshotOutJob(Job):
    pass


@dataclass(eq=False)
class SnapshotInJob(Job):
    data: bytes = b""


@dataclass(eq=False)
class DeleteJob(Job):
    pass


@dataclass(eq=False)
class StreamEntry:
    """A persistent stream as the engine thread knows it."""

    stream_id: str
    # acknowledged tokens, what the store holds: the serving layer's one record of where the
    # stream stands (the Session's copy runs ahead while a request is not yet durable)
    position: int
    snapshot_position: int  # where the store's snapshot of it stands
    claim: Claim | None = None  # how this server holds it in the store, while resident
    slot: int | None = None  # its Session stream while resident
    jobs: deque[Job] = field(default_factory=deque)
    current: Job | None = None  # started, not yet durable or failed
    loading: bool = False  # taking it from the store (and replaying its log)
    releasing: bool = False  # a cancelled generation's last token is still to be fed
    last_used: float = 0.0
    receipts: dict[str, Receipt] = field(default_factory=dict)  # the store's, while resident

    @property
    def idle(self) -> bool:
        return self.current is None and not self.loading and not self.releasing and \
            not self.jobs


@dataclass(eq=False)
class AppendRun:
    """Tokens being fed into a resident stream chunk by chunk: a client's append (scored) or,
    with no job, the replay of the stream's log after it was taken from the store."""

    entry: StreamEntry
    tokens: np.ndarray  # [n] int32
    job: AppendJob | None
    done: int = 0
    bits: float = 0.0
    predicted: int = 0  # bytes scored (the first byte of a fresh stream has no prediction)


@dataclass(eq=False)
class Generation:
    """One running generation request of the scheduler: a completion's choice (entry None) or a
    generation on a persistent stream."""

    ticket: Ticket
    index: int
    prompt: np.ndarray  # [P] int32
    entry: StreamEntry | None = None
    job: GenerateJob | None = None
    request_id: int = -1


@dataclass(eq=False)
class CompletionRequest:
    """A POST /v1/completions: one choice per prompt."""

    ticket: Ticket
    prompts: list[np.ndarray]
    params: GenerationParams
    arrival: int = -1
    submitted: int = 0  # choices handed to the scheduler
    finished: int = 0
    generations: list[Generation] = field(default_factory=list)
