"""Routing that stops at a lapsed lease: Serve's request router (power of two choices, streams
by their multiplexed id) that never sends a request to a replica whose lease in the store has
lapsed, and tells the ingress which replica each of its requests went to, so a request already
waiting on a replica that then lapses is answered 503 (Retry-After) instead of waiting out the
pause.

Why a router of our own, not a check per request: Serve's router keeps sending a stream to the
replica whose multiplexer holds it, and keeps choosing a stopped (SIGSTOP) replica from its
cached queue lengths for seconds, so neither a stream's requests nor the others would leave a
paused replica. The leases are in the store already (`alive:{name}`, renewed every third of the
lease, `name` being the replica id), so the router reads them for every replica at once, one
pipelined EXISTS per replica every LEASE_POLL_FRACTION of a lease, in the ingress's process,
off the request path: a request pays nothing for it (a read of the holder per request would
add a Redis round trip to each). A replica is left out from the poll that finds its lease gone,
about a lease plus a poll after it stopped; the other replicas take its streams from the store
at once (its lease has lapsed: redis_store.py's hand-over). A store that cannot be read leaves
every replica in (the leases are then unknown, not lapsed).

Also here, where requests reach a replica from: `keep_replica_on_loopback`.

Both sides of this live in the ingress's process: the router (on Serve's routing loop) and the
ingress (StreamRouter, on its own loop) share `ROUTES`, which the router fills.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter

from compressive_rt.serving.redis_namespaces import PREFIX
from compressive_rt.serving.redis_store import PASSWORD_VARIABLE

log = logging.getLogger("compressive_rt.serving")

# Ray's switch (ray_constants.ENABLE_RAY_CLUSTER, named for Windows and macOS where it is off):
# "0" keeps a Ray on this machine only, its node IP and its listening sockets on loopback
RAY_SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
ANY_INTERFACE = "[::]"  # what Ray 2.60's replica.py binds its inter-deployment server to
LEASE_POLL_FRACTION = 0.25  # how often the router reads the leases, as a part of a lease
FORWARD = "forward"  # StreamReplica's method that serves a request (the ones watched)


class Routes:
    """What the ingress's process knows of where requests went: the replica each request
    (Serve's internal request id) was sent to, and the replicas whose lease has lapsed."""

    def __init__(self) -> None:
        # internal request id -> replica id, for each forwarded request until its answer's head
        self.sent: dict[str, str] = {}
        self.lapsed: frozenset[str] = frozenset()

    def sent_to_lapsed(self, request_id: str) -> bool:
        """Was the request sent to a replica whose lease has lapsed since?"""
        return self.sent.get(request_id) in self.lapsed

    def forget(self, request_id: str) -> None:
        self.sent.pop(request_id, None)


ROUTES = Routes()


def shared_routes() -> Routes:
    """This process's ROUTES, by import: Serve pickles the router's class by value, and such a
    copy's module globals hold a copy of ROUTES that the ingress never reads."""
    from compressive_rt.serving import ray_routing

    return ray_routing.ROUTES


class LeaseRouter(PowerOfTwoChoicesRequestRouter):
    """Serve's default router, less the replicas whose lease has lapsed (see the module doc).
    `initialize_state` gets the store's URL and the lease (RequestRouterConfig's kwargs)."""

    def initialize_state(self, store: str, lease_s: float) -> None:
        import redis.asyncio

        password = os.environ.get(PASSWORD_VARIABLE) or None
        options = {"password": password} if password and "@" not in store else {}
        self._leases = redis.asyncio.Redis.from_url(store, socket_timeout=lease_s,
                                                    socket_connect_timeout=lease_s, **options)
        self._poll_s = lease_s * LEASE_POLL_FRACTION
        self._routes = shared_routes()
        self._polling: asyncio.Task | None = None  # started on Serve's routing loop

    async def _poll_leases(self) -> None:
        import redis

        unreadable = False
        while True:
            await asyncio.sleep(self._poll_s)
            names = [replica.replica_id.unique_id for replica in self._replicas_list]
            try:
                async with self._leases.pipeline(transaction=False) as pipe:
                    for name in names:
                        pipe.exists(PREFIX + "alive:" + name)
                    found = await pipe.execute()
            except (redis.RedisError, OSError) as exc:
                if not unreadable:
                    log.warning("the router cannot read the replicas' leases (%s): it routes "
                                "to every replica until it can", exc)
                unreadable, self._routes.lapsed = True, frozenset()
                continue
            unreadable = False
            lapsed = frozenset(name for name, alive in zip(names, found) if not alive)
            for name in lapsed - self._routes.lapsed:
                log.warning("replica %s: its lease has lapsed; no request goes to it until "
                            "it renews it", name)
            self._routes.lapsed = lapsed

    async def choose_replicas(self, candidate_replicas: list[Any],
                              pending_request: Any = None) -> list[list[Any]]:
        if self._polling is None:
            self._polling = asyncio.get_running_loop().create_task(self._poll_leases())
        ranks = await super().choose_replicas(candidate_replicas, pending_request)
        lapsed = self._routes.lapsed
        if not lapsed:
            return ranks
        live = [[replica for replica in rank if replica.replica_id.unique_id not in lapsed]
                for rank in ranks]
        live = [rank for rank in live if rank]
        if live:
            return live
        # only lapsed replicas hold the stream (or were drawn): any live replica takes it
        others = [replica for replica in candidate_replicas
                  if replica.replica_id.unique_id not in lapsed]
        return [others] if others else ranks

    async def _choose_replica_for_request(self, pending_request: Any, *,
                                          is_retry: bool = False) -> Any:
        replica = await super()._choose_replica_for_request(pending_request, is_retry=is_retry)
        metadata = pending_request.metadata
        if metadata.call_method == FORWARD:  # the ingress forgets it after the answer's head
            self._routes.sent[metadata.internal_request_id] = replica.replica_id.unique_id
        return replica


def keep_replica_on_loopback() -> None:
    """On a Ray kept on loopback (RAY_SINGLE_MACHINE), bind this Serve replica's
    inter-deployment gRPC server to 127.0.0.1: Ray 2.60's replica.py binds it to every
    interface, with no option, once the replica's constructor (the caller) has run."""
    if os.environ.get(RAY_SINGLE_MACHINE) != "0":
        return
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server
    replica.add_port_to_grpc_server = lambda server, address: bind(
        server, address.replace(ANY_INTERFACE, "127.0.0.1"))
