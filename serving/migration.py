"""`ctrt store migrate`: move the streams of one engine's namespace (serving/namespaces.py) to a
new engine of the same checkpoint, a stream at a time, while servers keep serving.

Each stream is taken with the store's fencing (on a shared store, its holder is asked to
spill it and give it up first; a server that asks for it meanwhile waits for the move,
bounded, rather than taking it back): from then on the old holder's writes are refused (409) and
nothing it acknowledged is lost, because everything acknowledged is in the store. Its snapshot
is read with the runtime's safe reader and written again by the new engine's runtime; its log
tail (the tokens after the snapshot) and its receipts are carried as they are: tokens fit every
engine, and the new engine's server replays the tail when it takes the stream, as after any
restart, so no engine runs here. Then one transaction of the store (`move`) writes the stream
into the new namespace and leaves a marker in the old one, only if nobody took the stream
since; if somebody did (a request reached an old server meanwhile), the stream is taken and
moved again. A crash between the take and the move leaves the stream in the old namespace,
whole: running the command again finishes the job, and moves nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from compressive_rt.errors import RuntimeInputError
from compressive_rt.runtime.manifest import Manifest
from compressive_rt.runtime.session import Session
from compressive_rt.runtime.snapshot import (
    check_restore_compatible,
    encode_snapshot,
    read_snapshot,
)
from compressive_rt.serving.engine import row_specs
from compressive_rt.serving.namespaces import EngineNamespace, NamespaceUsage, engine_namespace
from compressive_rt.serving.store import StaleVersion, StoreError, StreamMoved, UnknownStream

TRIES = 8  # takes of one stream that a server of the old engine may take back in between


@dataclass(frozen=True)
class Migration:
    """What a run did: streams moved now, and found moved or deleted meanwhile."""

    moved: int
    gone: int


def choose_source(usages: list[NamespaceUsage], target: EngineNamespace,
                  chosen: str | None) -> NamespaceUsage | None:
    """The namespace to move from: `chosen` (a namespace or a prefix of one), or else the only
    other namespace that holds streams (None: there is none, nothing to do)."""
    if chosen is not None:
        found = [usage for usage in usages if usage.namespace.digest.startswith(chosen)]
        if len(found) != 1:
            raise StoreError(f"--from {chosen} names {len(found)} of the store's namespaces "
                             f"({', '.join(u.namespace.digest for u in usages) or 'none'}): "
                             f"give one of them (`ctrt store list` shows them)")
        if found[0].namespace.digest == target.digest:
            raise StoreError(f"--from {chosen} is the new engine's own namespace: there is "
                             f"nothing to move")
        return found[0]
    others = [usage for usage in usages
              if usage.namespace.digest != target.digest and usage.streams]
    if len(others) > 1:
        raise StoreError(f"the store holds streams of {len(others)} other engines "
                         f"({', '.join(u.namespace.digest for u in others)}): name the one to "
                         f"move with --from (`ctrt store list` shows them)")
    return others[0] if others else None


def check_compatible(source: EngineNamespace, manifest: Manifest) -> None:
    """Refuse (one line naming what differs) unless the snapshots of `source`'s engine restore
    into `manifest`'s: runtime/snapshot.py's restore-compatibility rule, the one that
    Session.restore applies to every snapshot (and the reader to each as it is converted). A
    namespace that never recorded its engine's config (written before namespaces) leaves the
    config to each snapshot's check; one that never recorded its precision counts as the
    rule's default (fp32)."""
    config = manifest.config if source.config is None else source.config
    check_restore_compatible(source.identity, config, manifest, f"namespace {source.digest}",
                             source.precision)


class SnapshotConverter:
    """Snapshots of the old engine, checked by the runtime's reader (its restore rule
    included) and written again for the engine of `session`."""

    def __init__(self, session: Session) -> None:
        self.manifest, self.expected = session.manifest, row_specs(session)

    def __call__(self, stream_id: str, data: bytes) -> bytes:
        try:
            snapshot = read_snapshot(data, self.manifest, self.expected)
        except RuntimeInputError as exc:
            raise StoreError(f"stream {stream_id} was not moved: {exc}") from None
        return encode_snapshot(self.manifest, snapshot.state, snapshot.position,
                               snapshot.last_logits)


def migrate(store, source: EngineNamespace, session: Session,
            moved: Callable[[str], None] = lambda stream_id: None) -> Migration:
    """Move every stream of `source`'s namespace in `store` (opened with no namespace) to the
    namespace of `session`'s engine; `moved(stream_id)` after each."""
    target = engine_namespace(session.manifest)
    check_compatible(source, session.manifest)
    convert = SnapshotConverter(session)
    store.enter(source)
    if getattr(store, "shared", False):  # a server asking for a stream being moved waits for
        store.on_release(lambda stream_id: None)  # the move (then finds it moved: 409)
    done = gone = 0
    for stream_id in sorted(store.positions()):
        if _move(store, stream_id, target, convert):
            done += 1
        else:
            gone += 1
        moved(stream_id)
    return Migration(done, gone)


def _move(store, stream_id: str, target: EngineNamespace,
          convert: Callable[[str, bytes], bytes]) -> bool:
    """Move one stream; False if it was deleted or moved by someone else meanwhile."""
    for _ in range(TRIES):
        try:
            stored = store.take(stream_id)
            snapshot = None if stored.snapshot is None else convert(stream_id, stored.snapshot)
            store.move(stream_id, stored.version, target, snapshot)
            return True
        except (UnknownStream, StreamMoved):
            return False
        except StaleVersion:
            continue  # a server of the old engine took it back: take it again
    raise StoreError(f"stream {stream_id}: servers of the old engine took it back {TRIES} times "
                     f"while it was moved; send its requests to the new engine's server and "
                     f"run the command again")
