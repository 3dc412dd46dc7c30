"""What `ctrt serve` can be told, with its defaults: one frozen dataclass, checked once here,
and read alike by the command line (cli/serve.py), the server and the Ray deployment
(ray_app.py, whose `serve run` arguments are these fields)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from compressive_rt.errors import CtrtError

LOOPBACK = "127.0.0.1"
API_KEY_VARIABLE = "CTRT_API_KEY"  # the API key, when no option gives it
# the command-line option of each setting whose field is named otherwise
OPTION_NAMES = {"request_timeout_s": "request-timeout", "max_tokens_limit": "max-tokens",
                "grace_s": "grace", "retry_after_s": "retry-after",
                "body_timeout_s": "body-timeout", "header_timeout_s": "header-timeout",
                "lease_s": "lease"}


def option(field: str) -> str:
    """The command-line option that sets `field`."""
    return "--" + OPTION_NAMES.get(field, field.replace("_", "-"))


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
    max_stored_streams: int = 1024  # persistent streams in the store; beyond, a create is 429
    idempotency_keys: int = 64  # Idempotency-Key answers kept per stream (the latest)
    grace_s: float = 30.0  # SIGTERM: time for in-flight requests before they are cancelled
    retry_after_s: int = 1  # the Retry-After of a 429
    # a shared store: a server that does not renew its lease this long (paused, partitioned,
    # dead) loses its streams to whoever asks; a take waits at most twice this for a holder
    lease_s: float = 2.0
    access_log: bool = True  # one line per request (serving/middleware.py's AccessLog)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.type.endswith(" | None"):
                continue
            kind = field.type.removesuffix(" | None")
            if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise CtrtError(f"{option(field.name)} must be an integer, got {value!r}")
            if kind == "float" and not isinstance(value, (int, float)):
                raise CtrtError(f"{option(field.name)} must be a number, got {value!r}")
            if kind == "bool" and not isinstance(value, bool):
                raise CtrtError(f"{option(field.name)} must be true or false, got {value!r}")
        for name in ("streams", "queue_size", "max_body_bytes", "max_prompt_bytes",
                     "max_json_depth", "max_tokens_limit", "snapshot_every", "max_stored_streams",
                     "idempotency_keys", "retry_after_s", "max_connections"):
            if getattr(self, name) < 1:
                raise CtrtError(f"{option(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("store_max_bytes", "max_body_bytes_in_flight"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise CtrtError(f"{option(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "body_timeout_s", "header_timeout_s", "lease_s"):
            if not getattr(self, name) > 0:
                raise CtrtError(f"{option(name)} must be > 0, got {getattr(self, name):g}")
        if self.grace_s < 0:
            raise CtrtError(f"--grace must be >= 0 seconds, got {self.grace_s:g}")
        if not 0 <= self.port <= 65535:
            raise CtrtError(f"--port must be in [0, 65535], got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise CtrtError("the API key is empty: give a non-empty key or none")
        if not self.model_name:
            raise CtrtError("the model name is empty")


def settings_from_strings(values: dict[str, str]) -> dict[str, object]:
    """ServeSettings fields from text (`serve run` arguments): each converted to its field's
    type; a value that is not one is a CtrtError naming it."""
    kinds = {"int": (int, "an integer"), "float": (float, "a number"), "str": (str, "text"),
             "bool": (boolean, "true or false")}
    kinds.update({f"{name} | None": kind for name, kind in kinds.items()})
    types = {field.name: kinds[field.type] for field in dataclasses.fields(ServeSettings)}
    converted = {}
    for name, text in values.items():
        kind, described = types[name]
        try:
            converted[name] = kind(text)
        except ValueError:
            raise CtrtError(f"{name}={text!r} is not {described}") from None
    return converted


def boolean(text: str) -> bool:
    """true/false, yes/no, 1/0 (any case)."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(
        text.strip().lower())
    if value is None:
        raise ValueError(text)
    return value


SETTINGS_FIELDS = frozenset(field.name for field in dataclasses.fields(ServeSettings))
# each setting by its field's name and by its option's (underscores for dashes): grace_s and
# grace, max_tokens_limit and max_tokens
SETTING_NAMES = {name: field for field in SETTINGS_FIELDS
                 for name in (field, option(field)[2:].replace("-", "_"))}
