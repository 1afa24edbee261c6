"""Slow clients against a real uvicorn server on 127.0.0.1 (bounded: a few connections, each
closed within a second): a request not sent in time gets a 408 and is closed, connections over
the cap get a 503, a client that is slow but within the deadline is answered."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from depth_common.serving.http_guard import guard_uvicorn, read_timeout_protocol
from depth_common.serving.server import free_port

READ_TIMEOUT_S = 0.5
MAX_CONNECTIONS = 3


async def _app(scope: dict, receive, send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the whole body, as the transformer does
        message = await receive()
        more = message.get("more_body", False) and message["type"] == "http.request"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def port() -> Iterator[int]:
    config = uvicorn.Config(_app, host="127.0.0.1", port=free_port(), log_level="warning")
    guard_uvicorn(config, READ_TIMEOUT_S, MAX_CONNECTIONS)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield config.port
    server.should_exit = True
    thread.join(10)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def _get(port: int) -> bytes:
    with _connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return _read_all(sock)


def test_unfinished_headers_and_bodies_are_answered_408_and_closed(port: int) -> None:
    partial = [
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow",  # headers never finished
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",  # body short
    ]
    socks = []
    started = time.monotonic()
    for payload in partial:
        sock = _connect(port)
        sock.sendall(payload)
        socks.append(sock)
    for sock in socks:
        with sock:
            reply = _read_all(sock)  # returns once the server closed the connection
        assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
    assert time.monotonic() - started < READ_TIMEOUT_S + 3
    assert _get(port).startswith(b"HTTP/1.1 200")


def test_connections_over_the_cap_get_a_503_until_the_slow_ones_are_closed(port: int) -> None:
    idle = [_connect(port) for _ in range(MAX_CONNECTIONS)]  # connected, never sending
    try:
        time.sleep(0.1)
        assert _get(port).startswith(b"HTTP/1.1 503")
        time.sleep(READ_TIMEOUT_S + 0.5)  # the silent ones are closed by then
        assert _get(port).startswith(b"HTTP/1.1 200")
    finally:
        for sock in idle:
            sock.close()


def test_a_slow_client_within_the_deadline_is_answered(port: int) -> None:
    with _connect(port) as sock:
        for piece in (b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"Connection: close\r\n\r\n"):
            sock.sendall(piece)
            time.sleep(READ_TIMEOUT_S / 5)
        assert _read_all(sock).startswith(b"HTTP/1.1 200")


def test_the_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError, match="read_timeout_s: got 0"):
        read_timeout_protocol(0)
