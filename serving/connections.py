"""The HTTP protocol of `ctrt serve`: uvicorn's, with the two bounds on connections it lacks.

uvicorn times out a connection only while it is idle between requests (`timeout_keep_alive`,
which any byte cancels), and its `limit_concurrency` answers 503 only once a request's headers
are complete: a client that opens connections and never finishes their headers keeps each one
(and its file descriptor) for ever. Here every connection must complete a request's headers
within `header_timeout_s` of its first byte (or of its opening; at most twice that when a
request was answered meanwhile), else it is closed; and beyond
`max_connections` open at once a new connection gets a 503 and is closed at once.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from compressive_rt.serving.metrics import Metrics

REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
           b"connection: close\r\nretry-after: 1\r\ncontent-length: %d\r\n\r\n%s")


def bounded_protocol(header_timeout_s: float, max_connections: int,
                     metrics: Metrics) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (httptools or h11, whichever it picks) with a header-read
    timeout and a connection limit; `uvicorn.Config(http=...)` takes it."""
    message = (b'{"error": {"message": "the server holds %d connections, its bound '
               b'(--max-connections): retry later", "type": "server_error", "param": null, '
               b'"code": "connections"}}' % max_connections)
    refusal = REFUSAL % (len(message), message)

    class BoundedProtocol(AutoHTTPProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self.header_timer: asyncio.TimerHandle | None = None
            super().connection_made(transport)
            metrics.open_connections.set(len(self.connections))
            if len(self.connections) > max_connections:
                metrics.refused.labels("connections").inc()
                transport.write(refusal)
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            # bytes while no request is running start a request's headers
            if self.header_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)
            metrics.open_connections.set(len(self.connections))

        def _arm(self) -> None:
            started = self.cycle  # a request whose headers complete replaces it
            self.header_timer = self.loop.call_later(header_timeout_s, self._expired, started)

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _expired(self, started: object) -> None:
            self.header_timer = None
            if self.cycle is not started:  # a request's headers came in time
                if self.cycle.response_complete:  # and it is answered: the next one's begin
                    self._arm()
                return
            if not self.transport.is_closing():
                metrics.refused.labels("header_timeout").inc()
                self.transport.close()

    return BoundedProtocol
