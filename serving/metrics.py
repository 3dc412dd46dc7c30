"""Prometheus metrics of one server (prometheus-client), in a registry of its own so that two
servers in one process (tests) do not share counters. Served at GET /metrics, every sample
labelled `replica` with the server's name (what X-Ctrt-Replica and a stream's holder say), so
that the samples of several servers, gathered into one answer (the Ray router's /metrics), stay
apart: each replica's counters are its own and only ever grow."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

# decode steps take milliseconds, a prefill or a spill can take a second
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


REPLICA_LABEL = "replica"


class Labelled:
    """A registry whose samples all carry `replica`."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.registry = CollectorRegistry()

    def families(self) -> list[Metric]:
        """The metric families, each sample labelled with the replica."""
        return [labelled(family, self.replica) for family in self.registry.collect()]

    def exposition(self) -> bytes:
        """GET /metrics: Prometheus's text format."""
        return exposition(self.families())


def refused_counter(registry: CollectorRegistry) -> Counter:
    return Counter("ctrt_refused", "Requests and connections refused by a bound (json_depth, "
                   "bodies_in_flight, connections, header_timeout, body_timeout, store_full; "
                   "the Ray router's: request_too_large, replica_unavailable, replica_lapsed, "
                   "shutting_down)", ["bound"],
                   registry=registry)


def body_bytes_gauge(registry: CollectorRegistry) -> Gauge:
    return Gauge("ctrt_request_body_bytes_held", "Bytes reserved by request bodies being read "
                 "or held by running requests", registry=registry)


class RouterMetrics(Labelled):
    """The Ray router's own (ray_app.StreamRouter): its refusals, the bodies it holds, and how
    many replicas the last GET /metrics gathered."""

    def __init__(self, replica: str) -> None:
        super().__init__(replica)
        self.refused = refused_counter(self.registry)
        self.body_bytes_held = body_bytes_gauge(self.registry)
        self.scraped = Gauge("ctrt_scrape_replicas", "Replicas the last GET /metrics asked, by "
                             "whether they answered (one that did not is left out of it)",
                             ["answered"], registry=self.registry)


class Metrics(Labelled):
    def __init__(self, replica: str) -> None:
        super().__init__(replica)
        registry = self.registry
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
        self.refused = refused_counter(registry)
        self.store_bytes = Gauge("ctrt_store_bytes", "A local store's database and WAL files",
                                 registry=registry)
        self.store_max_bytes = Gauge("ctrt_store_max_bytes", "A local store's bound "
                                     "(--store-max-bytes)", registry=registry)
        self.body_bytes_held = body_bytes_gauge(registry)
        self.open_connections = Gauge("ctrt_open_connections", "HTTP connections open",
                                      registry=registry)
        self.loads = Counter("ctrt_loads", "Streams taken from the store into the session",
                             registry=registry)
        self.replayed_tokens = Counter(
            "ctrt_replayed_tokens", "Logged tokens replayed after a stream's stored snapshot when "
            "it was taken from the store (at most --snapshot-every per load)", registry=registry)


def labelled(family: Metric, replica: str) -> Metric:
    copy = Metric(family.name, family.documentation, family.type, family.unit)
    copy.samples = [sample._replace(labels={**sample.labels, REPLICA_LABEL: replica})
                    for sample in family.samples]
    return copy


def parse(text: str) -> list[Metric]:
    """The metric families of an exposition in Prometheus's text format."""
    return list(text_string_to_metric_families(text))


def merged(sources: Iterable[list[Metric]]) -> list[Metric]:
    """One family per name holding the samples of every source (several replicas' families,
    labelled apart), in the order the names first appear."""
    families: dict[str, Metric] = {}
    for source in sources:
        for family in source:
            into = families.setdefault(family.name, Metric(family.name, family.documentation,
                                                          family.type, family.unit))
            into.samples += family.samples
    return list(families.values())


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def exposition(families: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


def sample_value(text: str, name: str, labels: dict[str, str] | None = None) -> list[float]:
    """The values of the samples called `name` in an exposition whose labels include
    `labels` (one per replica when they differ only by replica)."""
    wanted = (labels or {}).items()
    return [sample.value for family in parse(text) for sample in family.samples
            if sample.name == name and wanted <= sample.labels.items()]
