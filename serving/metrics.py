"""Prometheus metrics of one server (prometheus-client), in a registry of its own so that two
servers in one process (tests) do not share counters. Served at GET /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# decode steps take milliseconds, a prefill or a spill can take a second
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("ctrt_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=registry)
        self.generated_tokens = Counter("ctrt_generated_tokens", "Tokens generated",
                                        registry=registry)
        self.appended_tokens = Counter("ctrt_appended_tokens", "Tokens appended to streams",
                                       registry=registry)
        self.time_to_first_token = Histogram(
            "ctrt_time_to_first_token_seconds", "From a request's acceptance to its first token",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.inter_token_latency = Histogram(
            "ctrt_inter_token_latency_seconds", "Between consecutive tokens of a request",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_depth = Gauge("ctrt_queue_depth", "Requests accepted, waiting for the engine",
                                 registry=registry)
        self.resident_streams = Gauge("ctrt_resident_streams",
                                      "Persistent streams held in the session", registry=registry)
        self.stored_streams = Gauge("ctrt_stored_streams", "Persistent streams in the store",
                                    registry=registry)
        self.max_stored_streams = Gauge(
            "ctrt_max_stored_streams", "Persistent streams the store may hold "
            "(--max-stored-streams); POST /v1/streams is 429 beyond", registry=registry)
        self.engine_step = Histogram(
            "ctrt_engine_step_seconds", "One engine feed: a generation step or an append chunk",
            ["kind"], buckets=LATENCY_BUCKETS, registry=registry)
        self.spills = Counter("ctrt_spills", "Streams written to the store and released",
                              registry=registry)
        self.refused = Counter("ctrt_refused", "Requests and connections refused by a bound "
                               "(json_depth, bodies_in_flight, connections, header_timeout, "
                               "body_timeout, store_full)", ["bound"], registry=registry)
        self.store_bytes = Gauge("ctrt_store_bytes", "A local store's database and WAL files",
                                 registry=registry)
        self.store_max_bytes = Gauge("ctrt_store_max_bytes", "A local store's bound "
                                     "(--store-max-bytes)", registry=registry)
        self.body_bytes_held = Gauge("ctrt_request_body_bytes_held", "Bytes reserved by "
                                     "request bodies being read or held by running requests",
                                     registry=registry)
        self.open_connections = Gauge("ctrt_open_connections", "HTTP connections open",
                                      registry=registry)
        self.loads = Counter("ctrt_loads", "Streams taken from the store into the session",
                             registry=registry)
        self.replayed_tokens = Counter(
            "ctrt_replayed_tokens", "Logged tokens replayed after a stream's stored snapshot when "
            "it was taken from the store (at most --snapshot-every per load)", registry=registry)
