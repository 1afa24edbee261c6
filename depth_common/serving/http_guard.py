"""Slow clients cannot hold a server: a deadline to send a request, and a cap on connections.

uvicorn (0.55) closes idle keep-alive connections, but a client that opens a connection and
never finishes its headers or its body is kept forever: 400 such connections were never closed.
:func:`guard_uvicorn` sets, on the ``uvicorn.Config`` of a server this project runs (the
transformer, the demo):

- a protocol (uvicorn's own, :data:`AutoHTTPProtocol`, with a timer) that gives each request
  ``read_timeout_s`` seconds from its first byte until its body is complete, then answers
  ``408`` and closes the connection; the time the app takes to answer is not counted;
- ``limit_concurrency``: over ``max_connections`` open connections or running requests, uvicorn
  answers 503 instead of taking more work;
- a keep-alive timeout no longer than the read timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

log = logging.getLogger(__name__)

DEFAULT_READ_TIMEOUT_S = 30.0  # deploy.read_timeout_s
DEFAULT_MAX_CONNECTIONS = 64  # deploy.max_connections
_TIMEOUT_BODY = b"the request was not sent in time\n"
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class ReadTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol with a deadline for receiving each request (see the module)."""

    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    _read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._read_timer is None and self._between_requests():
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._read_timer = self.loop.call_later(self.read_timeout_s, self._on_read_timeout)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _on_read_timeout(self) -> None:
        self._read_timer = None
        cycle = self.cycle
        received = cycle is not None and not cycle.response_complete and not cycle.more_body
        if received or self.transport.is_closing():
            return  # the request is in: the app is answering it
        log.info("%s: request not received within %g s, closing", self.client, self.read_timeout_s)
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def read_timeout_protocol(read_timeout_s: float) -> type[ReadTimeoutProtocol]:
    """:class:`ReadTimeoutProtocol` with ``read_timeout_s`` (seconds > 0) as its deadline."""
    if not read_timeout_s > 0:
        raise ValueError(f"read_timeout_s: got {read_timeout_s!r}, expected seconds > 0")
    return type("ReadTimeoutProtocol", (ReadTimeoutProtocol,), {"read_timeout_s": read_timeout_s})


def guard_uvicorn(config: uvicorn.Config, read_timeout_s: float, max_connections: int) -> None:
    """Set the read deadline, the connection cap and the keep-alive timeout on ``config``
    (before the server starts: uvicorn reads them when it loads the config)."""
    if max_connections < 1:
        raise ValueError(f"max_connections: got {max_connections!r}, expected an integer >= 1")
    config.http = read_timeout_protocol(read_timeout_s)
    config.limit_concurrency = max_connections
    config.timeout_keep_alive = max(1, min(int(config.timeout_keep_alive), int(read_timeout_s)))
