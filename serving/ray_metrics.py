"""GET /metrics on Ray: the router asks every live replica of its application for its metrics
and answers them together, each replica's samples labelled with its name (`replica`, what
X-Ctrt-Replica says), the router's own (its refusals) as replica "router".

Why here rather than Ray's metrics export or a scrape target per replica: the replicas already
keep prometheus-client registries (the single-process server's), which Ray's export does not
read; and a target per replica needs a port per replica reachable by Prometheus and a
discovery of those ports. Through the router one scrape of Serve's proxy gets every replica,
and each replica's counters only ever grow under its own label: a replica that dies takes its
series with it (Prometheus sees that series end, not a counter going back), its replacement
starts new ones under its new name.

A replica is reached through its Serve actor (`SERVE_REPLICA::{app}#StreamReplica#{id}`, the
name Ray 2.60 gives it) and Serve's own request entry point, so the call runs on the replica's
event loop like any request. One that does not answer within SCRAPE_TIMEOUT_S (paused,
starting, dying) is left out of that answer and counted in ctrt_scrape_replicas{answered}."""

from __future__ import annotations

import asyncio
import logging
import pickle
import uuid

import ray
from ray import serve
from ray.serve._private.common import RequestMetadata

from compressive_rt.serving.metrics import RouterMetrics, exposition, merged, parse

log = logging.getLogger("compressive_rt.serving")

SCRAPE_TIMEOUT_S = 2.0
ROUTER_NAME = "router"
METRICS_METHOD = "metrics_text"  # StreamReplica's


def replica_actor_names(app: str, deployment: str) -> list[str]:
    """The named actors of the live replicas of `deployment` in application `app`."""
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return sorted(actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                  if actor["name"].startswith(prefix))


async def ask(actor_name: str, app: str) -> str:
    """One replica's metrics (Prometheus's text format)."""
    actor = ray.get_actor(actor_name, namespace="serve")
    request = RequestMetadata(request_id=uuid.uuid4().hex, internal_request_id=uuid.uuid4().hex,
                              call_method=METRICS_METHOD, app_name=app)
    return await actor.handle_request.remote(pickle.dumps(request))


async def gather_metrics(deployment: str, router: RouterMetrics) -> bytes:
    """Every live replica's metrics and the router's, as one answer."""
    app = serve.get_replica_context().app_name
    names = replica_actor_names(app, deployment)
    answers = await asyncio.gather(
        *(asyncio.wait_for(ask(name, app), SCRAPE_TIMEOUT_S) for name in names),
        return_exceptions=True)
    texts = [answer for answer in answers if isinstance(answer, str)]
    for name, answer in zip(names, answers, strict=True):
        if not isinstance(answer, str):
            log.warning("metrics: replica %s did not answer: %s", name,
                        type(answer).__name__)
    router.scraped.labels("yes").set(len(texts))
    router.scraped.labels("no").set(len(names) - len(texts))
    return exposition(merged([*(parse(text) for text in texts), router.families()]))
