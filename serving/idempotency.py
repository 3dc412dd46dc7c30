"""Safe retries: an append or a generation on a stream may carry an `Idempotency-Key` header.
The store keeps the latest few keys of each stream with their request's digest and answer
(store.Receipt), written in the same transaction as the tokens. A retry with the same key and
body gets the stored answer and applies nothing, also after a restart or kill -9; the same key
with another body is 422; the same key while the first request is queued or running is 409."""

from __future__ import annotations

import hashlib
import json

from compressive_rt.serving.errors import ApiError, bad_request
from compressive_rt.serving.jobs import GenerateJob, Job
from compressive_rt.serving.store import Receipt
from compressive_rt.serving.tickets import Event, Finished, Token

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255


def request_key(headers: object, raw_body: bytes) -> tuple[str | None, str]:
    """(the request's Idempotency-Key or None, the digest of its JSON body), the key checked:
    1 to 255 printable ASCII characters. The digest is of the body's content (keys sorted,
    no spacing), so a retry serialised another way is the same request."""
    key = headers.get(HEADER.lower())
    if key is None:
        return None, ""
    if not 1 <= len(key) <= MAX_KEY_CHARS or not (key.isascii() and key.isprintable()):
        raise bad_request(f"the {HEADER} header must be 1 to {MAX_KEY_CHARS} printable ASCII "
                          f"characters (a UUID, for example)", HEADER)
    content = json.dumps(json.loads(raw_body), sort_keys=True, separators=(",", ":"))
    return key, hashlib.sha256(content.encode()).hexdigest()


def stored_answer(stream_id: str, job: Job, receipt: Receipt) -> tuple[list[Event], dict]:
    """The events and Done result a retry of `job` gets from its receipt (a generation's
    tokens, as they came); another body with the key is a 422."""
    if receipt.digest != job.digest:
        raise ApiError(422, f"{HEADER} {job.key!r} was used on stream {stream_id} by a request "
                            f"with another body: use a new key for a new request",
                       "invalid_request_error", HEADER, "idempotency_key_reused")
    answer = json.loads(receipt.answer)
    if not isinstance(job, GenerateJob):
        return [], answer
    tokens = answer["token_ids"]
    events: list[Event] = [Token(0, token) for token in tokens[:-1]]
    events.append(Finished(0, answer["finish_reason"], tuple(tokens), tokens[-1]))
    return events, answer
