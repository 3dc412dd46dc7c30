"""`ctrt store list` and `ctrt store migrate`: the namespaces of a `ctrt serve` stream store
(one per engine identity) and the move of streams to a re-exported engine of the same
checkpoint (serving/migration.py). Only argparse at import time."""

from __future__ import annotations

import argparse

from compressive_rt.errors import CtrtError

STORE_HELP = ("the stream store: the --store directory of `ctrt serve` or its Redis URL "
              "(redis://[:PASSWORD@]HOST:PORT[/DB]; the password also from "
              "$CTRT_REDIS_PASSWORD)")


def register(subparsers: argparse._SubParsersAction) -> None:
    store = subparsers.add_parser(
        "store", help="list a stream store's namespaces; move streams to a re-exported engine",
        description="A `ctrt serve` store keeps the streams of each engine in a namespace of "
                    "its own (named by a digest of the engine's identity: its contract "
                    "version, checkpoint and graph hashes), so a server of a re-exported "
                    "engine starts with an empty namespace. `migrate` moves the streams of "
                    "one namespace to another engine of the same checkpoint, config and "
                    "precision.")
    commands = store.add_subparsers(dest="store_command", metavar="COMMAND", required=True)
    listing = commands.add_parser(
        "list", help="every namespace: its engine, streams and stored bytes",
        description="Print one line per namespace: its name (for --from), the streams it "
                    "holds, their stored bytes (snapshots, logs, receipts), the streams moved "
                    "out of it, and its engine (contract, checkpoint, precision, graph hash "
                    "prefixes). A server of the engine in question need not run; a local store "
                    "must not be in use by one (it is one process's).")
    listing.add_argument("store", help=STORE_HELP)
    listing.set_defaults(handler=run_list)
    move = commands.add_parser(
        "migrate", help="move streams to the namespace of a re-exported engine",
        description="Move every stream of a namespace to the namespace of NEW_ENGINE_DIR, "
                    "refused (error, nothing moved) unless both engines were exported from "
                    "the same checkpoint with the same config and precision. Each stream is "
                    "taken with the store's fencing (a server of the old engine that holds it "
                    "gives it up, and answers 409 for it from then on; nothing it acknowledged "
                    "is lost), its snapshot is checked and written again for the new engine, "
                    "its log tail is carried (the new engine's server replays it), and it is "
                    "written to the new namespace and removed from the old in one transaction. "
                    "Streams already moved are skipped: after a crash, run it again. A local "
                    "store must not be in use (stop its server first); on a Redis store, "
                    "servers of both engines keep serving meanwhile.")
    move.add_argument("store", help=STORE_HELP)
    move.add_argument("--engine", required=True, metavar="NEW_ENGINE_DIR",
                      help="the engine the streams move to (its namespace is created if new)")
    move.add_argument("--from", dest="source", default=None, metavar="NAMESPACE",
                      help="the namespace to move from, or a prefix of it (default: the only "
                           "other namespace that holds streams; `ctrt store list` shows them)")
    move.set_defaults(handler=run_migrate)


def _open(location: str):
    from pathlib import Path

    from compressive_rt.serving.redis_store import is_redis_url
    from compressive_rt.serving.stores import open_store

    if not is_redis_url(location) and not Path(location).is_dir():
        raise CtrtError(f"no stream store at {location}: give the --store directory of "
                        f"`ctrt serve` or its redis:// URL")
    return open_store(location, None)


def run_list(args: argparse.Namespace) -> int:
    store = _open(args.store)
    try:
        usages = store.namespaces()
    finally:
        store.close()
    print(f"{'NAMESPACE':<16}  {'STREAMS':>7}  {'BYTES':>12}  {'MOVED':>5}  ENGINE")
    for usage in usages:
        print(f"{usage.namespace.digest:<16}  {usage.streams:>7}  {usage.bytes:>12}  "
              f"{usage.moved:>5}  {usage.namespace.summary()}")
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    from compressive_rt.progress import progress_bar
    from compressive_rt.runtime.session import Session
    from compressive_rt.serving.migration import check_compatible, choose_source, migrate
    from compressive_rt.serving.namespaces import engine_namespace

    session = Session(args.engine, max_streams=1)
    target = engine_namespace(session.manifest)
    store = _open(args.store)
    try:
        chosen = choose_source(store.namespaces(), target, args.source)
        if chosen is None:
            print(f"nothing to move: the store holds no streams of another engine than "
                  f"{target.digest}")
            return 0
        source = chosen.namespace
        check_compatible(source, session.manifest)  # before the progress bar starts
        with progress_bar(total=chosen.streams, desc=f"{source.digest} -> {target.digest}",
                          unit="stream") as bar:
            done = migrate(store, source, session, lambda _: bar.update())
    finally:
        store.close()
    print(f"moved {done.moved} streams from namespace {source.digest} to {target.digest}"
          + (f" ({done.gone} deleted or moved meanwhile)" if done.gone else ""))
    return 0
