"""The v2 HTTP calls :class:`~depth_common.serving.client.DepthClient` makes, over one
keep-alive ``http.client`` connection; bodies built and parsed by tritonclient's public
helpers (``InferenceServerClient.generate_request_body``, ``InferResult.from_response_body``).

Why not ``tritonclient.http.InferenceServerClient`` itself: its geventhttpclient reader takes
an answer in 4 KB ``recv`` calls and copies the body three more times, which is what an app
paid for ``points`` (a 256 x 512 answer with points is 2.2 MB): side by side on the demo
model (``bench/bench_app_outputs.py --tritonclient``), depth + points cost 1.24x a depth-only
request through tritonclient's client and 1.17x through this one (depth-only p50 14.8 and
14.6 ms). It also ties a client to the thread that made it (gevent); this one does not,
though one connection still serves one call at a time.

:class:`V2HttpConnection` has the methods of tritonclient's client that ``DepthClient`` calls,
with their signatures and their errors: a non-200 answer raises ``InferenceServerException``
with the server's ``error`` message and the HTTP status; a refused, reset or timed-out
connection raises ``OSError``/``TimeoutError``.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from tritonclient.utils import InferenceServerException

# A reused keep-alive connection the server has closed meanwhile fails with one of these
# before any answer; the call is then made once more on a fresh connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class V2HttpConnection:
    """``host[:port]`` of a v2 server (port 80, or 443 with ``tls``); ``timeout_s`` bounds
    connecting and each socket read. ``tls`` speaks HTTPS with the system's CAs, or with
    ``ssl_context`` when given."""

    def __init__(
        self,
        url: str,
        timeout_s: float,
        tls: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        try:
            parts = urlsplit(f"//{url}")
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise ValueError(f"url: expected host[:port], got {url!r} ({exc})") from None
        if not host or parts.path or parts.query or parts.username:
            raise ValueError(f"url: expected host[:port], got {url!r}")
        self.host, self.port, self.timeout_s = host, port or (443 if tls else 80), timeout_s
        # None: plain HTTP.
        self._ssl_context = (ssl_context or ssl.create_default_context()) if tls else None
        self._conn: http.client.HTTPConnection | None = None
        self._used = False  # the connection has answered before: it may have gone stale

    # -- tritonclient.http.InferenceServerClient's methods ------------------------------------
    def is_server_ready(self) -> bool:
        return self._request("GET", "/v2/health/ready")[0] == 200

    def is_model_ready(self, model_name: str, model_version: str = "") -> bool:
        return self._request("GET", _model_path(model_name, model_version, "ready"))[0] == 200

    def get_model_metadata(self, model_name: str, model_version: str = "") -> dict[str, Any]:
        return self._json(_model_path(model_name, model_version, ""))

    def get_model_config(self, model_name: str, model_version: str = "") -> dict[str, Any]:
        return self._json(_model_path(model_name, model_version, "config"))

    def infer(
        self,
        model_name: str,
        inputs: Sequence[Any],
        model_version: str = "",
        outputs: Sequence[Any] | None = None,
    ) -> Any:  # tritonclient.http.InferResult
        # tritonclient.http imports gevent: loaded where a call is made (deploy modules import
        # the client module for its helpers only).
        from tritonclient.http import InferenceServerClient, InferResult

        body, json_size = InferenceServerClient.generate_request_body(inputs, outputs=outputs)
        headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
        path = _model_path(model_name, model_version, "infer")
        status, answer, header_length = self._request("POST", path, body, headers)
        _raise_unless_ok(status, answer)
        return InferResult.from_response_body(
            answer, header_length=None if header_length is None else int(header_length)
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn, self._used = None, False

    # -- one exchange ------------------------------------------------------------------------
    def _json(self, path: str) -> dict[str, Any]:
        status, answer, _ = self._request("GET", path)
        _raise_unless_ok(status, answer)
        return json.loads(answer)

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, str | None]:
        """(status, body, Inference-Header-Content-Length) of one exchange; a stale reused
        connection is replaced once, any other failure closes it and propagates."""
        for may_retry in (self._used, False):  # only a reused connection can have gone stale
            try:
                return self._exchange(method, path, body, headers or {})
            except BaseException as exc:
                self.close()  # half a request or half an answer: the connection is unusable
                if not (may_retry and isinstance(exc, _STALE)):
                    raise
        raise AssertionError("unreachable: the last try returns or raises")  # pragma: no cover

    def _exchange(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes, str | None]:
        if self._conn is None:
            if self._ssl_context is not None:
                self._conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout_s, context=self._ssl_context
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout_s
                )
        self._conn.request(method, path, body=body, headers=headers)
        response = self._conn.getresponse()
        answer = response.read()  # one read of Content-Length bytes
        self._used = True
        if response.will_close:
            self.close()
        return response.status, answer, response.getheader("Inference-Header-Content-Length")


def _model_path(model_name: str, model_version: str, leaf: str) -> str:
    path = f"/v2/models/{quote(model_name)}"
    if model_version:
        path += f"/versions/{quote(model_version)}"
    return f"{path}/{leaf}" if leaf else path


def _raise_unless_ok(status: int, answer: bytes) -> None:
    """tritonclient's error for a non-200 answer: the server's ``error`` and the status."""
    if status == 200:
        return
    text = answer.decode("utf-8", "replace")
    try:
        message = json.loads(text)["error"] if text else "the server sent an empty answer"
    except (ValueError, KeyError, TypeError):
        message = text[:500]
    raise InferenceServerException(msg=str(message), status=str(status))
