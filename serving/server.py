"""`ctrt serve` as a library call: open the engine and the store, bind, run uvicorn until
SIGTERM or SIGINT, shut down gracefully (uvicorn finishes in-flight requests within the grace
period, then the engine cancels what is left and spills every stream), exit 0."""

from __future__ import annotations

import logging
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import uvicorn

from compressive_rt.errors import CtrtError
from compressive_rt.runtime.session import Session
from compressive_rt.runtime.snapshot import most_snapshot_bytes
from compressive_rt.serving.app import create_app
from compressive_rt.serving.connections import bounded_protocol
from compressive_rt.serving.engine import Engine, row_specs
from compressive_rt.serving.metrics import Metrics
from compressive_rt.serving.namespaces import engine_namespace
from compressive_rt.serving.schemas import BYTE_VOCAB
from compressive_rt.serving.settings import LOOPBACK, ServeSettings
from compressive_rt.serving.sqlite_store import SQLiteStore
from compressive_rt.serving.store import server_name
from compressive_rt.serving.stores import describe_store, open_store


def open_engine(engine_dir: str | Path, settings: ServeSettings, store_dir: str | Path,
                backend: str = "auto", threads: int | None = None,
                prepack: str = "all", name: str | None = None) -> tuple[object, Engine]:
    """(the ASGI app, its engine, not started) for an engine directory and a store (a
    directory, or the URL of a store shared with other servers: serving/stores.py). `name`:
    this server's as a stream's holder, in its metrics and its access log (default: its host
    name and a random suffix)."""
    name = name or server_name()
    session = Session(engine_dir, backend=backend, max_streams=settings.streams,
                      threads=threads, prepack=prepack)
    vocab = session.dims.vocab_size
    if vocab != BYTE_VOCAB:
        raise CtrtError(f"ctrt serve takes text (bytes), so it needs a byte-level engine "
                        f"(vocab_size {BYTE_VOCAB}); {engine_dir} has vocab_size {vocab}")
    store = open_store(store_dir, engine_namespace(session.manifest), settings.store_max_bytes,
                       settings.lease_s, name)
    metrics = Metrics(name)
    if isinstance(store, SQLiteStore):
        metrics.store_bytes.set_function(store.file_bytes)
        metrics.store_max_bytes.set(store.max_bytes)
    engine = Engine(session, store, settings, metrics)
    limit = most_snapshot_bytes(session.manifest, row_specs(session))
    return create_app(engine, settings, metrics, limit), engine


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the server starts (a busy port is a user error)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CtrtError(f"cannot listen on {host}:{port}: {exc.strerror}: choose another "
                        f"--port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(engine_dir: str | Path, settings: ServeSettings, store_dir: str | Path,
          backend: str = "auto", threads: int | None = None, prepack: str = "all",
          say: Callable[[str], None] = print) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    app, engine = open_engine(engine_dir, settings, store_dir, backend, threads, prepack)
    sock = listen(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    say(f"ctrt serve: {engine_dir} as model {settings.model_name!r} on "
        f"{engine.session.backend.name}, {settings.streams} resident streams, "
        f"{len(engine.streams)} stored in {describe_store(store_dir)}; its name (a stream's "
        f"holder, metrics' replica label, access log): {engine.metrics.replica}")
    if settings.host != LOOPBACK and settings.api_key is None:
        say(f"warning: listening on {settings.host} without an API key: anyone who reaches "
            f"this port can use the server (--api-key)")
    key = "API key required" if settings.api_key else "no API key"
    say(f"listening on http://{host}:{port} ({key})")
    protocol = bounded_protocol(settings.header_timeout_s, settings.max_connections,
                                engine.metrics)
    # the app logs each request itself (settings.access_log), with its stream and name
    config = uvicorn.Config(app, lifespan="on", log_level="info", access_log=False,
                            timeout_graceful_shutdown=settings.grace_s, http=protocol)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it stopped for once it is done; for SIGTERM that graceful
    # stop is this command's normal end, so it must not kill the process (exit 0)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if not server.started:
        raise CtrtError("the server did not start; see the messages above")
    say("ctrt serve: stopped; every stream is in the store")
    sys.stdout.flush()
    return 0
