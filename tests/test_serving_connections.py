"""Bounds on connections and request bodies, against `ctrt serve` in a subprocess over raw
sockets: half-open connections are closed, connections beyond the bound are refused, withheld
uploads cost their reservation and no more, while a well-behaved client gets through. Every
wait is for an event (a close, an answer) with a generous deadline, never a fixed sleep."""

import select
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from compressive_rt.serving.metrics import sample_value

pytestmark = [pytest.mark.serving, pytest.mark.slow]

DEADLINE_S = 60.0  # for an event the server must cause; reached only if it does not
PARTIAL_HEADERS = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
UPLOAD_BYTES = 3_000_000  # declared by each withheld snapshot upload (under this engine's limit)


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S)


def answer_of(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def response_of(sock: socket.socket) -> bytes:
    """One HTTP response: its head and its Content-Length of body."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def metric(server, name: str, labels: dict[str, str] | None = None) -> float:
    return sum(sample_value(httpx.get(f"{server.url}/metrics").text, name, labels))


def withheld_upload(port: int, stream: str) -> socket.socket:
    """A snapshot upload that declares UPLOAD_BYTES and sends 1,000 of them."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    sock.sendall(f"PUT /v1/streams/{stream}/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Content-Type: application/octet-stream\r\n"
                 f"Content-Length: {UPLOAD_BYTES}\r\n\r\n".encode() + bytes(1000))
    return sock


def assert_refused(uploads: list[socket.socket], count: int) -> None:
    """`count` of the withheld uploads are answered 503 by the body bound (the admitted ones
    wait for their bodies and answer nothing): waits for the answers, not for a time."""
    answered: set[socket.socket] = set()
    while len(answered) < count:
        readable, _, _ = select.select([s for s in uploads if s not in answered], [], [],
                                       DEADLINE_S)
        assert readable, f"only {len(answered)} of {len(uploads)} withheld uploads answered"
        answered.update(readable)
    for sock in answered:
        refusal = response_of(sock)
        assert refusal.startswith(b"HTTP/1.1 503 "), refusal[:300]
        assert b"(--max-body-bytes-in-flight)" in refusal


def test_connections_that_never_finish_their_headers_are_closed(server):
    running = server("--header-timeout", "1")
    half_open = [connect(running) for _ in range(20)]
    for sock in half_open:
        sock.sendall(PARTIAL_HEADERS)
    for sock in half_open:
        assert answer_of(sock) == b""  # closed without an answer
        sock.close()
    assert httpx.get(f"{running.url}/health").status_code == 200
    assert metric(running, "ctrt_refused_total", {"bound": "header_timeout"}) == 20


def test_connections_beyond_the_bound_get_503_and_a_freed_place_is_taken_again(server):
    running = server("--max-connections", "4", "--header-timeout", "600")
    idle = [connect(running) for _ in range(4)]
    for sock in idle:
        sock.sendall(PARTIAL_HEADERS)
    with connect(running) as extra:
        refused = answer_of(extra)
    assert refused.startswith(b"HTTP/1.1 503 ") and b"(--max-connections)" in refused
    idle.pop().close()
    with httpx.Client(timeout=DEADLINE_S) as client:
        for _ in range(int(DEADLINE_S * 10)):  # until the server has seen the close
            try:
                answer = client.get(f"{running.url}/health")
            except httpx.TransportError:
                continue
            if answer.status_code == 200:
                break
        assert answer.status_code == 200
    for sock in idle:
        sock.close()


def test_withheld_uploads_hold_their_reservation_and_no_more(server):
    """The bound is 3 uploads and a bit: 3 of 10 withheld uploads are admitted, 7 answered
    503 before their bodies are read; small requests still get through."""
    bound = 3 * UPLOAD_BYTES + 500_000
    running = server("--max-body-bytes-in-flight", str(bound), "--body-timeout", "600")
    stream = httpx.post(f"{running.url}/v1/streams").json()["id"]
    uploads = [withheld_upload(running.port, stream) for _ in range(10)]
    assert_refused(uploads, 7)
    assert metric(running, "ctrt_refused_total", {"bound": "bodies_in_flight"}) == 7
    assert metric(running, "ctrt_request_body_bytes_held") == 3 * UPLOAD_BYTES
    models = httpx.get(f"{running.url}/v1/models")
    assert models.status_code == 200
    for sock in uploads:
        sock.close()
    with httpx.Client(timeout=DEADLINE_S) as client:
        for _ in range(int(DEADLINE_S * 10)):  # until the server has seen the closes
            if metric(running, "ctrt_request_body_bytes_held") == 0:
                break
            client.get(f"{running.url}/health")
        assert metric(running, "ctrt_request_body_bytes_held") == 0


def test_a_body_not_received_within_the_body_timeout_is_408(server):
    running = server("--body-timeout", "1")
    stream = httpx.post(f"{running.url}/v1/streams").json()["id"]
    with withheld_upload(running.port, stream) as sock:
        answer = answer_of(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"was not received within 1 s (--body-timeout): 1000 bytes came" in answer
    assert metric(running, "ctrt_request_body_bytes_held") == 0


def test_requests_queued_on_a_stream_behind_one_answered_at_once_are_all_answered(server):
    """Found by the abuse benchmark: a stream's job that finishes on the spot (a refused
    upload, a snapshot download) left the next job on that stream waiting for an unrelated
    event. Eight concurrent refused uploads on a stream being loaded must all be answered."""
    running = server("--streams", "1")
    stream, other = (httpx.post(f"{running.url}/v1/streams").json()["id"] for _ in range(2))
    for target in (stream, other):  # `stream` is spilled: its requests wait for its load
        assert httpx.post(f"{running.url}/v1/streams/{target}/append",
                          json={"text": "abc"}).status_code == 200
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: httpx.put(
            f"{running.url}/v1/streams/{stream}/snapshot", content=b"not a snapshot",
            timeout=DEADLINE_S).status_code, range(8)))
    assert answers == [400] * 8
