"""`ctrt serve`: the runtime as a network service (a thin shell over serving.server).

Only argparse at import time; the server's imports (FastAPI, uvicorn, onnxruntime) happen in
the handler, and nothing here imports torch."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from compressive_rt.cli.options import check_options
from compressive_rt.cli.run import _add_engine_args
from compressive_rt.errors import CtrtError
from compressive_rt.serving.settings import API_KEY_VARIABLE

DEFAULT_REPLICAS = 2
DEFAULT_STORE = "ctrt_store"


def register(subparsers: argparse._SubParsersAction) -> None:
    from compressive_rt.serving.redis_store import PASSWORD_VARIABLE
    from compressive_rt.serving.settings import ServeSettings

    defaults = ServeSettings()
    serve = subparsers.add_parser(
        "serve", help="serve an engine over HTTP: OpenAI-compatible completions and "
                      "persistent streams",
        description="Serve an exported engine over HTTP: POST /v1/completions and GET "
                    "/v1/models (OpenAI-compatible, SSE with stream: true), persistent streams "
                    "(POST /v1/streams, .../append scores text, .../generate continues it, "
                    "GET/PUT .../snapshot) that survive restarts (a write-ahead log and "
                    "snapshots in --store, fsync'ed before each answer), GET /health, /ready "
                    "and /metrics (Prometheus). SIGTERM finishes in-flight requests within "
                    "--grace seconds, stores every stream and exits 0.")
    _add_engine_args(serve)
    serve.add_argument("--host", default=defaults.host,
                       help=f"address to listen on (default {defaults.host}: this machine only)")
    serve.add_argument("--port", type=int, default=defaults.port,
                       help=f"port (default {defaults.port}; 0: any free port, printed)")
    serve.add_argument("--streams", type=int, default=defaults.streams,
                       help=f"streams held in memory at once: running requests and resident "
                            f"persistent streams (default {defaults.streams}); beyond, the "
                            f"least recently used idle stream is spilled to the store")
    serve.add_argument("--store", default=DEFAULT_STORE, metavar="DIR|URL",
                       help=f"where the persistent streams live: a directory (SQLite in WAL "
                            f"mode, one server; created if missing; default ./{DEFAULT_STORE}) "
                            f"or a Redis server shared by several servers, "
                            f"redis://[:PASSWORD@]HOST:PORT[/DB] (rediss:// for TLS; the "
                            f"password also from ${PASSWORD_VARIABLE}); Redis must run "
                            f"appendonly yes, appendfsync always for appends to survive its "
                            f"own crash")
    serve.add_argument("--store-max-bytes", type=int, default=None, metavar="BYTES",
                       help="bound on a local store's database: beyond it appends, snapshots "
                            "and creates answer 507 while reads and DELETE still work (default: "
                            "90%% of what the store holds plus its disk's free space when the "
                            "server starts, so a full store can still delete); freed space is "
                            "given back to the disk. Redis: its own maxmemory")
    serve.add_argument("--api-key", default=None, metavar="KEY",
                       help=f"require Authorization: Bearer KEY on /v1/ routes (also from "
                            f"--api-key-file or ${API_KEY_VARIABLE}; default: no key)")
    serve.add_argument("--api-key-file", default=None, metavar="PATH",
                       help="read the API key from this file (its first line)")
    serve.add_argument("--model-name", default=None,
                       help="the model id clients name (default: the engine directory's name)")
    serve.add_argument("--queue-size", type=int, default=defaults.queue_size,
                       help=f"requests that may wait for the engine; beyond, 429 with "
                            f"Retry-After (default {defaults.queue_size})")
    serve.add_argument("--request-timeout", type=float, default=defaults.request_timeout_s,
                       metavar="SECONDS",
                       help=f"a request not answered within this time is cancelled, 504 "
                            f"(default {defaults.request_timeout_s:g})")
    serve.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes,
                       help=f"largest request body, 413 beyond (default "
                            f"{defaults.max_body_bytes}; an uploaded snapshot may be as large "
                            f"as a snapshot of this engine)")
    serve.add_argument("--max-body-bytes-in-flight", type=int, default=None, metavar="BYTES",
                       help="bound on the bytes of request bodies held at once: each request "
                            "reserves its Content-Length (or its route's limit) before its "
                            "body is read, 503 when the bound would be passed (default: 64 MiB "
                            "or two of the largest body, an uploaded snapshot, whichever is "
                            "larger)")
    serve.add_argument("--body-timeout", type=float, default=defaults.body_timeout_s,
                       metavar="SECONDS",
                       help=f"a request body not received within this time after its headers "
                            f"is 408 (default {defaults.body_timeout_s:g})")
    serve.add_argument("--header-timeout", type=float, default=defaults.header_timeout_s,
                       metavar="SECONDS",
                       help=f"a connection that does not complete a request's headers within "
                            f"this time of its first byte is closed (default "
                            f"{defaults.header_timeout_s:g})")
    serve.add_argument("--max-connections", type=int, default=defaults.max_connections,
                       help=f"connections open at once; beyond, a new one gets 503 and is "
                            f"closed (default {defaults.max_connections}; keep it below the "
                            f"process's file descriptor limit, ulimit -n)")
    serve.add_argument("--max-prompt-bytes", type=int, default=defaults.max_prompt_bytes,
                       help=f"largest prompt, 400 beyond (default {defaults.max_prompt_bytes})")
    serve.add_argument("--max-json-depth", type=int, default=defaults.max_json_depth,
                       help=f"deepest nesting of arrays and objects in a JSON body, 400 beyond, "
                            f"checked before it is parsed (default {defaults.max_json_depth})")
    serve.add_argument("--max-tokens", type=int, default=defaults.max_tokens_limit,
                       help=f"largest max_tokens a request may ask for (default "
                            f"{defaults.max_tokens_limit})")
    serve.add_argument("--snapshot-every", type=int, default=defaults.snapshot_every,
                       metavar="TOKENS",
                       help=f"store a stream's snapshot after this many acknowledged tokens "
                            f"(its log replays at most that many on a restart; default "
                            f"{defaults.snapshot_every})")
    serve.add_argument("--max-stored-streams", type=int, default=defaults.max_stored_streams,
                       metavar="N",
                       help=f"persistent streams the store may hold; beyond, POST /v1/streams "
                            f"is 429 until one is deleted (default "
                            f"{defaults.max_stored_streams})")
    serve.add_argument("--idempotency-keys", type=int, default=defaults.idempotency_keys,
                       metavar="N",
                       help=f"answers of appends and generations sent with an Idempotency-Key "
                            f"header kept per stream, the latest N: a retry with one of these "
                            f"keys gets its answer and applies nothing (default "
                            f"{defaults.idempotency_keys})")
    serve.add_argument("--grace", type=float, default=defaults.grace_s, metavar="SECONDS",
                       help=f"SIGTERM: time in-flight requests get to finish (default "
                            f"{defaults.grace_s:g})")
    serve.add_argument("--lease", type=float, default=defaults.lease_s, metavar="SECONDS",
                       help=f"a Redis store: a server that has not renewed its lease for this "
                            f"long (paused, partitioned, dead) loses its streams to the next "
                            f"server that asks; a take waits at most twice this for a live "
                            f"holder to give a stream up (default {defaults.lease_s:g})")
    serve.add_argument("--no-access-log", action="store_true", help="do not log each request")
    ray = serve.add_argument_group(
        "replicas on Ray Serve", "--ray serves the same API from several replicas (each one "
        "engine, --threads threads, --streams resident streams) on a Ray cluster, behind "
        "Serve's proxy on the head node at --host:--port; needs --store redis://... and "
        "pip install 'compressive-rt[ray]'")
    ray.add_argument("--ray", action="store_true", help="serve on Ray Serve")
    ray.add_argument("--replicas", type=int, default=None,
                     help=f"replicas of the engine (default {DEFAULT_REPLICAS})")
    ray.add_argument("--replicas-per-node", type=int, default=None,
                     help="at most this many replicas on one node (default: no bound)")
    ray.add_argument("--ray-address", default=None, metavar="ADDRESS",
                     help="the cluster to join: auto (the one `ray start` made on this "
                          "node) or HOST:PORT (default: $RAY_ADDRESS, else a Ray of this "
                          "process's own, stopped at exit)")
    serve.set_defaults(handler=run_serve)


def api_key(args: argparse.Namespace) -> str | None:
    """--api-key, else --api-key-file's first line, else $CTRT_API_KEY, else None."""
    if args.api_key is not None:
        return args.api_key
    if args.api_key_file is not None:
        path = Path(args.api_key_file)
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise CtrtError(f"--api-key-file {path} cannot be read: {exc}") from None
        if not lines or not lines[0].strip():
            raise CtrtError(f"--api-key-file {path} is empty: put the key on its first line")
        return lines[0].strip()
    return os.environ.get(API_KEY_VARIABLE) or None


def run_serve(args: argparse.Namespace) -> int:
    from compressive_rt.serving.settings import ServeSettings

    check_options(args, {"threads": 1})
    ray_only = [option for option, dest in [("--replicas", "replicas"),
                                            ("--replicas-per-node", "replicas_per_node"),
                                            ("--ray-address", "ray_address")]
                if getattr(args, dest) is not None]
    if ray_only and not args.ray:
        raise CtrtError(f"{', '.join(ray_only)} only apply with --ray")
    settings = ServeSettings(
        host=args.host, port=args.port, streams=args.streams,
        model_name=args.model_name or Path(args.engine_dir).resolve().name,
        api_key=api_key(args), queue_size=args.queue_size,
        request_timeout_s=args.request_timeout, max_body_bytes=args.max_body_bytes,
        max_prompt_bytes=args.max_prompt_bytes, max_json_depth=args.max_json_depth,
        max_tokens_limit=args.max_tokens, snapshot_every=args.snapshot_every,
        max_stored_streams=args.max_stored_streams, idempotency_keys=args.idempotency_keys,
        grace_s=args.grace, store_max_bytes=args.store_max_bytes,
        max_body_bytes_in_flight=args.max_body_bytes_in_flight, body_timeout_s=args.body_timeout,
        header_timeout_s=args.header_timeout, max_connections=args.max_connections,
        lease_s=args.lease, access_log=not args.no_access_log)
    if args.ray:
        return run_on_ray(args, settings)
    from compressive_rt.serving.server import serve

    return serve(args.engine_dir, settings, args.store, backend=args.backend,
                 threads=args.threads, prepack=args.prepack)


def run_on_ray(args: argparse.Namespace, settings: object) -> int:
    try:
        from compressive_rt.serving.ray_app import RayDeployment
        from compressive_rt.serving.ray_server import serve_on_ray
    except ImportError as exc:
        raise CtrtError(f"--ray needs Ray Serve ({exc.name} is missing): pip install "
                        f"'compressive-rt[ray]'") from None
    deployment = RayDeployment(
        engine_dir=str(Path(args.engine_dir).resolve()), store=args.store, settings=settings,
        replicas=DEFAULT_REPLICAS if args.replicas is None else args.replicas,
        replicas_per_node=args.replicas_per_node,
        threads=args.threads or 1, backend=args.backend, prepack=args.prepack)
    return serve_on_ray(deployment, args.ray_address)
