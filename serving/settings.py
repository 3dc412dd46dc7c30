"""What `ctrt serve` can be told, with its defaults: one frozen dataclass, checked once."""

from __future__ import annotations

from dataclasses import dataclass

from compressive_rt.errors import CtrtError

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ServeSettings:
    host: str = LOOPBACK
    port: int = 8000
    streams: int = 8  # resident streams: the Session's max_streams
    model_name: str = "compressive-rt"
    api_key: str | None = None
    queue_size: int = 64  # requests accepted and waiting for the engine; beyond: 429
    request_timeout_s: float = 600.0  # from acceptance to the last byte of the answer
    max_body_bytes: int = 1 << 20  # a request body (an uploaded snapshot: its own bound)
    # bodies held at once (being read, or held by running requests); None: 64 MiB or two of
    # the largest body (a snapshot upload), whichever is larger
    max_body_bytes_in_flight: int | None = None
    body_timeout_s: float = 60.0  # from a request's headers to the last byte of its body
    header_timeout_s: float = 10.0  # from a request's first byte to the end of its headers
    max_connections: int = 1024  # open at once; beyond, a new one gets 503 and is closed
    max_prompt_bytes: int = 1 << 16  # one prompt, UTF-8
    max_json_depth: int = 16  # nesting of a JSON body (OpenAI's bodies need 3)
    max_tokens_limit: int = 4096  # the largest max_tokens a request may ask for
    store_max_bytes: int | None = None  # a local store's database (None: 90% of its disk)
    snapshot_every: int = 4096  # acknowledged tokens between a stream's snapshots
    grace_s: float = 30.0  # SIGTERM: time for in-flight requests before they are cancelled
    retry_after_s: int = 1  # the Retry-After of a 429

    def __post_init__(self) -> None:
        positive = {"streams": self.streams, "queue_size": self.queue_size,
                    "request_timeout_s": self.request_timeout_s,
                    "max_body_bytes": self.max_body_bytes,
                    "max_prompt_bytes": self.max_prompt_bytes,
                    "max_json_depth": self.max_json_depth,
                    "max_tokens_limit": self.max_tokens_limit,
                    "snapshot_every": self.snapshot_every, "retry_after_s": self.retry_after_s,
                    "body_timeout_s": self.body_timeout_s,
                    "header_timeout_s": self.header_timeout_s,
                    "max_connections": self.max_connections}
        for name, value in positive.items():
            if not value > 0:
                raise CtrtError(f"{name.replace('_', '-')} must be > 0, got {value}")
        for name in ("store_max_bytes", "max_body_bytes_in_flight"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise CtrtError(f"{name.replace('_', '-')} must be > 0, got {value}")
        if self.grace_s < 0:
            raise CtrtError(f"grace must be >= 0 seconds, got {self.grace_s}")
        if not 0 <= self.port <= 65535:
            raise CtrtError(f"port must be in [0, 65535], got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise CtrtError("the API key is empty: give a non-empty key or none")
        if not self.model_name:
            raise CtrtError("the model name is empty")
