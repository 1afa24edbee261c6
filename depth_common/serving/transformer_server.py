"""Run :class:`DepthTransformer` with ``kserve.ModelServer``: the local stack and the pod.

``python -m depth_common.serving.transformer_server --predictor_host HOST:GRPC_PORT`` takes
kserve's own argument names (``--model_name``, ``--predictor_host``, ``--http_port``; KServe's
controller appends them to a transformer container's arguments) plus ours. Three things of
``kserve.ModelServer`` are changed, each for a failure seen with kserve 0.21:

- the REST server binds ``--host`` (default 127.0.0.1; kserve always binds 0.0.0.0); the pod
  passes ``--host 0.0.0.0``;
- binary v2 requests keep BYTES inputs as raw bytes (kserve's ``InferRequest.from_bytes``
  re-encodes them as UTF-8 strings, which fails for every PNG or JPEG with a 500), with every
  length checked (400 naming the input);
- an ASGI guard in front of the app answers only the endpoints the transformer serves (v1/v2
  health, metadata, predict/infer, metrics; no repository load/unload, no docs) with 404,
  refuses bodies over ``--max_request_bytes`` with 413, and turns FastAPI's 422 for a
  malformed body into a 400;
- slow clients are bounded (:mod:`depth_common.serving.http_guard`): ``--read_timeout_s`` to
  send a request, ``--max_connections`` at once; a request over ``--max_request_pixels`` or
  whose answer would exceed ``--max_response_bytes`` is a 413 naming the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import warnings
from collections.abc import Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from depth_common.errors import RequestTooLarge
from depth_common.serving.codec import DEFAULT_MAX_PIXELS
from depth_common.serving.heap import keep_large_buffers
from depth_common.serving.http_guard import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_READ_TIMEOUT_S,
    guard_uvicorn,
)
from depth_common.serving.kserve_import import (
    DataPlane,
    InferInput,
    InferRequest,
    InvalidInput,
    PredictorConfig,
    RequestedOutput,
    RESTServer,
    kserve,
    model_server,
)
from depth_common.serving.payload_logger import PayloadLogger, PayloadLogMiddleware
from depth_common.serving.requests import (
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_REQUEST_PIXELS,
    DEFAULT_MAX_RESPONSE_BYTES,
)
from depth_common.serving.transformer import DepthTransformer

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080  # KServe's container port for a transformer
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
HEADER_LENGTH = "inference-header-content-length"


def _binary_header(body: bytes, json_length: Any) -> tuple[dict[str, Any], int]:
    """The JSON header of a binary v2 request and its length, each field's type checked."""
    try:
        n = int(json_length)
    except (TypeError, ValueError):
        raise InvalidInput(f"{HEADER_LENGTH}: expected an integer, got {json_length!r}") from None
    if not 0 < n <= len(body):
        raise InvalidInput(f"{HEADER_LENGTH} {n} is outside the body's {len(body)} bytes")
    try:
        header = json.loads(body[:n])
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: a header nested thousands of levels deep is malformed, not a 500.
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidInput(f"the first {n} bytes are not the JSON request header ({why})") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput('request header: expected {"inputs": [...]}')
    for key, kind in (("id", str), ("parameters", dict), ("outputs", list)):
        if header.get(key) is not None and not isinstance(header[key], kind):
            raise InvalidInput(f"request header: {key!r} is not a {kind.__name__}")
    return header, n


def _input_spec(spec: Any, i: int) -> tuple[str, list[int], str, dict[str, Any]]:
    """(name, shape, datatype, parameters) of ``inputs[i]``, or InvalidInput naming it."""
    if not isinstance(spec, dict) or not {"name", "shape", "datatype"} <= set(spec):
        raise InvalidInput(f"inputs[{i}]: expected name, shape and datatype")
    name, shape, datatype = spec["name"], spec["shape"], spec["datatype"]
    params = spec.get("parameters") or {}
    if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(params, dict):
        raise InvalidInput(f"inputs[{i}]: name and datatype are strings, parameters a mapping")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(f"inputs[{i}] {name!r}: shape {shape!r} is not a list of sizes >= 0")
    return name, shape, datatype, params


def parse_binary_request(body: bytes, json_length: Any, model_name: str) -> InferRequest:
    """A v2 request in the binary tensor extension, every input's bytes kept as sent."""
    header, offset = _binary_header(body, json_length)
    inputs, raw_inputs = [], []
    for i, spec in enumerate(header["inputs"]):
        name, shape, datatype, params = _input_spec(spec, i)
        inp = InferInput(name, shape, datatype, parameters=params)
        raw = None
        if "binary_data_size" in params:
            size = params["binary_data_size"]
            if type(size) is not int or size < 0 or offset + size > len(body):
                raise InvalidInput(
                    f"input {name!r}: binary_data_size {size!r} runs past the body "
                    f"({len(body) - offset} bytes left)"
                )
            raw, offset = body[offset : offset + size], offset + size
        elif "data" in spec:
            inp.data = spec["data"]
        else:
            raise InvalidInput(f"input {name!r}: no data and no binary_data_size")
        inputs.append(inp)
        raw_inputs.append(raw)
    if offset != len(body):
        raise InvalidInput(f"{len(body) - offset} bytes after the last input's binary data")
    outputs = []
    for j, out in enumerate(header.get("outputs") or []):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InvalidInput(f'outputs[{j}]: expected {{"name": ...}}')
        if not isinstance(out.get("parameters") or {}, dict):
            raise InvalidInput(f"outputs[{j}] {out['name']!r}: parameters is not a mapping")
        outputs.append(RequestedOutput(out["name"], out.get("parameters")))
    return InferRequest(
        model_name=model_name,
        infer_inputs=inputs,
        request_id=header.get("id"),
        raw_inputs=raw_inputs,  # kserve's own way in: InferInput.as_numpy() decodes them
        parameters=header.get("parameters"),
        request_outputs=outputs or None,
    )


class BinarySafeDataPlane(DataPlane):
    """kserve's data plane, with binary v2 requests parsed by :func:`parse_binary_request`."""

    def decode_inference_request(self, body: Any, headers: dict, model_name: str) -> Any:
        if isinstance(body, bytes | bytearray):
            length = {k.lower(): v for k, v in headers.items()}.get(HEADER_LENGTH)
            if length is None:
                raise InvalidInput(f"binary request without the {HEADER_LENGTH} header")
            return parse_binary_request(bytes(body), length, model_name)
        try:
            return super().decode_inference_request(body, headers, model_name)
        except InvalidInput:
            raise
        except Exception as exc:  # noqa: BLE001 - the client's body: a 400, never a 500
            raise InvalidInput(f"malformed request ({type(exc).__name__}: {exc})") from None


def _routes(model: str) -> list[tuple[str, re.Pattern[str]]]:
    m = re.escape(model)
    gets = [r"/", r"/metrics", r"/v1/models", rf"/v1/models/{m}", r"/v2", r"/v2/health/live",
            r"/v2/health/ready", r"/v2/models", rf"/v2/models/{m}", rf"/v2/models/{m}/ready"]  # fmt: skip
    posts = [rf"/v1/models/{m}:predict", rf"/v2/models/{m}/infer"]
    return [("GET", re.compile(f"^{p}$")) for p in gets] + [
        ("POST", re.compile(f"^{p}$")) for p in posts
    ]


class EdgeGuard:
    """ASGI middleware: an allow-list of (method, path) and a request-body size limit."""

    def __init__(self, app: Any, model_name: str, max_request_bytes: int) -> None:
        self.app, self.max_bytes = app, max_request_bytes
        self.routes = _routes(model_name)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        if not any(m == method and p.match(path) for m, p in self.routes):
            return await _json(send, 404, f"{method} {path}: not an endpoint of this server")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _json(send, 413, _too_large(length.decode(errors="replace"), self))
        received = 0

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise RequestTooLarge(_too_large(f"more than {received}", self))
            return message

        try:
            await self.app(scope, counted_receive, send)
        except RequestTooLarge as exc:
            await _json(send, 413, str(exc))


def _too_large(size: str, guard: EdgeGuard) -> str:
    return f"request body of {size} bytes is over the limit of {guard.max_bytes} bytes"


async def _json(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _too_large_error(request: Any, exc: RequestTooLarge) -> Any:
    return JSONResponse(status_code=413, content={"error": str(exc)})


async def _validation_error(request: Any, exc: Any) -> Any:
    errors = "; ".join(
        f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
    )
    return JSONResponse(status_code=400, content={"error": f"malformed request: {errors}"})


class _OneLineRefusals(logging.Filter):
    """kserve logs every 400 with a traceback: one line says it (the client got the message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, InvalidInput):
            record.msg, record.args, record.exc_info = "refused (400): %s", (exc,), None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_logging(access_log: bool) -> None:
    """No per-request timing lines, no tracebacks for refused requests."""
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    logging.getLogger("kserve").addFilter(_OneLineRefusals())
    if not access_log:
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")


class TransformerServer(kserve.ModelServer):
    """``kserve.ModelServer``, REST only, on ``host``, with the changes of the module docstring."""

    def __init__(
        self,
        host: str,
        max_request_bytes: int,
        model_name: str,
        *,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        **kwargs: Any,
    ) -> None:
        super().__init__(enable_grpc=False, workers=1, **kwargs)
        self.host = host
        self.read_timeout_s, self.max_connections = read_timeout_s, max_connections
        self.dataplane = BinarySafeDataPlane(model_registry=self.registered_models)
        app = model_server.app
        app.add_middleware(EdgeGuard, model_name=model_name, max_request_bytes=max_request_bytes)
        app.add_exception_handler(RequestValidationError, _validation_error)
        app.add_exception_handler(RequestTooLarge, _too_large_error)

    def start(self, models: list[Any]) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = RESTServer(
            "kserve.model_server:app",
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
        )
        self._rest_server.config.host = self.host  # kserve hard-codes 0.0.0.0
        guard_uvicorn(self._rest_server.config, self.read_timeout_s, self.max_connections)
        self.servers.append(self._rest_server.start())
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m depth_common.serving.transformer_server",
        description="KServe transformer: images in, depth out, Triton over v2 gRPC behind it.",
    )
    p.add_argument("--model_name", default="depth", help="the name clients call (URL path)")
    p.add_argument("--predictor_host", required=True, help="Triton's gRPC HOST:PORT")
    p.add_argument("--predictor_model", default="depth", help="the Triton model to call")
    p.add_argument("--predictor_protocol", "--protocol", default="grpc-v2", choices=["grpc-v2"])
    p.add_argument("--predictor_request_timeout_seconds", type=int, default=60)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a pod)")
    p.add_argument("--http_port", type=int, default=DEFAULT_PORT)
    p.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS)
    p.add_argument("--max_images", type=int, default=DEFAULT_MAX_IMAGES)
    p.add_argument("--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    p.add_argument(
        "--max_request_pixels",
        type=int,
        default=DEFAULT_MAX_REQUEST_PIXELS,
        help="decoded pixels of all images of one request (413 over it)",
    )
    p.add_argument(
        "--max_response_bytes",
        type=int,
        default=DEFAULT_MAX_RESPONSE_BYTES,
        help="bytes of one answer as sent (413 over it)",
    )
    p.add_argument(
        "--read_timeout_s",
        type=float,
        default=DEFAULT_READ_TIMEOUT_S,
        help="seconds a client has to send a request's headers and body",
    )
    p.add_argument(
        "--max_connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="connections and requests at once (503 over it)",
    )
    p.add_argument("--access_log", action="store_true", help="log one line per request")
    p.add_argument("--logger_url", help="post each request/response as a CloudEvent here")
    return p


def predictor_address(host: str) -> str:
    """``host:port`` for gRPC: KServe passes the predictor Service's name alone (port 80)."""
    bare = host.rsplit("]", 1)[-1]  # an IPv6 literal [::1]:9000 has colons of its own
    return host if ":" in bare else f"{host}:80"


def main(argv: Sequence[str] | None = None) -> None:
    # parse_known_args: KServe's controller may append arguments of its own (--grpc_port ...).
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        log.info("ignoring arguments %s", unknown)
    keep_large_buffers()  # answers with points are megabytes: see depth_common.serving.heap
    model = DepthTransformer(
        args.model_name,
        args.predictor_model,
        max_pixels=args.max_pixels,
        max_images=args.max_images,
        max_request_pixels=args.max_request_pixels,
        max_response_bytes=args.max_response_bytes,
    )
    model.load()
    predictor = PredictorConfig(
        predictor_host=predictor_address(args.predictor_host),
        predictor_protocol=args.predictor_protocol,
        predictor_request_timeout_seconds=args.predictor_request_timeout_seconds,
    )
    server = TransformerServer(
        args.host,
        args.max_request_bytes,
        args.model_name,
        read_timeout_s=args.read_timeout_s,
        max_connections=args.max_connections,
        http_port=args.http_port,
        predictor_config=predictor,
        enable_latency_logging=False,
    )
    if args.logger_url:  # payload logging to the drift monitor (outermost: sees what is served)
        logger = PayloadLogger(args.logger_url, service=args.model_name)
        model_server.app.add_middleware(PayloadLogMiddleware, logger=logger)
    quiet_logging(args.access_log)  # after ModelServer() configured kserve's loggers
    server.start([model])


if __name__ == "__main__":
    main()
