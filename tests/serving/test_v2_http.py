"""V2HttpConnection: the v2 HTTP exchange DepthClient makes, against scripted servers (the
real Triton and transformer cases are in test_client.py and test_transformer.py)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import tritonclient.http as tc
from cryptography import x509  # kserve's, kfp's and mlflow's dependency
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tritonclient.utils import InferenceServerException

from depth_common.errors import DepthConnectionError
from depth_common.serving.client import DepthClient
from depth_common.serving.v2_http import V2HttpConnection

Handler = Callable[[socket.socket, int], None]


def _read_request(conn: socket.socket) -> bytes:
    """One HTTP/1.1 request (headers + Content-Length body) off the socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    return head


def _answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.fixture
def scripted() -> Iterator[Callable[[Handler], tuple[str, list[bytes]]]]:
    """A server that hands each accepted connection (and its number) to ``handler``;
    returns its ``host:port`` and the request heads it read."""
    servers: list[socket.socket] = []

    def start(handler: Handler, tls: ssl.SSLContext | None = None) -> tuple[str, list[bytes]]:
        srv = socket.create_server(("127.0.0.1", 0))
        servers.append(srv)
        heads: list[bytes] = []

        def serve() -> None:
            n = 0
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                n += 1
                try:
                    if tls is not None:
                        conn = tls.wrap_socket(conn, server_side=True)
                except ssl.SSLError:  # the client refused the certificate
                    conn.close()
                    continue
                with conn:
                    handler(_Recorder(conn, heads), n)

        threading.Thread(target=serve, daemon=True).start()
        return f"127.0.0.1:{srv.getsockname()[1]}", heads

    yield start
    for srv in servers:
        srv.close()


class _Recorder:
    """The accepted socket, with the request heads it read kept for the test."""

    def __init__(self, conn: socket.socket, heads: list[bytes]) -> None:
        self.conn, self.heads = conn, heads

    def read(self) -> bytes:
        head = _read_request(self.conn)
        self.heads.append(head)
        return head

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)


def test_a_keep_alive_connection_the_server_closed_is_replaced_once(scripted) -> None:
    def one_answer_per_connection(conn, n: int) -> None:
        conn.read()
        conn.send(_answer(200, b""))  # keep-alive by HTTP/1.1 default, then closed anyway

    url, heads = scripted(one_answer_per_connection)
    client = V2HttpConnection(url, timeout_s=5)
    assert client.is_server_ready()
    assert client.is_server_ready()  # the first connection is gone: a fresh one answers
    assert client.is_model_ready("depth", "2")
    assert [h.split(b"\r\n")[0] for h in heads] == [
        b"GET /v2/health/ready HTTP/1.1",
        b"GET /v2/health/ready HTTP/1.1",
        b"GET /v2/models/depth/versions/2/ready HTTP/1.1",
    ]
    client.close()


def test_a_fresh_connection_closed_without_an_answer_is_not_retried(scripted) -> None:
    def hang_up(conn, n: int) -> None:
        conn.read()

    url, heads = scripted(hang_up)
    client = V2HttpConnection(url, timeout_s=5)
    with pytest.raises(ConnectionError):
        client.get_model_metadata("depth")
    assert len(heads) == 1  # a request that may have run is not sent twice


def test_a_refusal_is_tritonclients_exception_with_the_servers_message(scripted) -> None:
    def refuse(conn, n: int) -> None:
        conn.read()
        conn.send(_answer(400, json.dumps({"error": "focal_px: expected (1, 100000]"}).encode()))
        conn.read()
        conn.send(_answer(503, b"<html>upstream down</html>"))

    url, _ = scripted(refuse)
    client = V2HttpConnection(url, timeout_s=5)
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_config("depth")
    assert (refused.value.status(), refused.value.message()) == (
        "400",
        "focal_px: expected (1, 100000]",
    )
    with pytest.raises(InferenceServerException) as down:
        client.get_model_config("depth")
    assert down.value.status() == "503" and "upstream down" in down.value.message()


def test_infer_sends_tritonclients_body_and_parses_a_binary_answer(scripted) -> None:
    depth = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    header = json.dumps(
        {
            "model_name": "depth",
            "outputs": [
                {"name": "depth", "shape": [1, 2, 3], "datatype": "FP32",
                 "parameters": {"binary_data_size": depth.nbytes}},
            ],
        }
    ).encode()  # fmt: skip
    requests: list[bytes] = []

    def answer(conn, n: int) -> None:
        requests.append(conn.read())
        conn.send(
            _answer(
                200, header + depth.tobytes(), {"Inference-Header-Content-Length": str(len(header))}
            )
        )

    url, _ = scripted(answer)
    inp = tc.InferInput("image_bytes", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"\xff\xd8jpeg"], dtype=object), binary_data=True)
    out = [tc.InferRequestedOutput("depth", binary_data=True)]
    result = V2HttpConnection(url, timeout_s=5).infer("depth", [inp], outputs=out)
    np.testing.assert_array_equal(result.as_numpy("depth"), depth)
    head = requests[0].decode()
    assert head.startswith("POST /v2/models/depth/infer HTTP/1.1")
    assert "Inference-Header-Content-Length:" in head


def test_a_silent_server_times_out(scripted) -> None:
    stop = threading.Event()

    def silent(conn, n: int) -> None:
        conn.read()
        stop.wait(5)

    url, _ = scripted(silent)
    with pytest.raises(TimeoutError):
        V2HttpConnection(url, timeout_s=0.3).is_server_ready()
    stop.set()


@pytest.mark.parametrize("url", ["localhost:http", ":8000", "host/v2", "user@host:1", ""])
def test_an_address_that_is_not_host_and_port_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"host\[:port\]"):
        V2HttpConnection(url, timeout_s=1)


@pytest.mark.parametrize(
    ("url", "tls", "host", "port"),
    [("depth.example.com", False, "depth.example.com", 80),
     ("depth.example.com", True, "depth.example.com", 443),
     ("[::1]:8000", False, "::1", 8000), ("127.0.0.1:9", True, "127.0.0.1", 9)],
)  # fmt: skip
def test_a_port_defaults_to_the_schemes(url: str, tls: bool, host: str, port: int) -> None:
    conn = V2HttpConnection(url, timeout_s=1, tls=tls)
    assert (conn.host, conn.port) == (host, port)


def test_names_and_versions_are_quoted_into_the_path(scripted) -> None:
    def ok(conn, n: int) -> None:
        conn.read()
        conn.send(_answer(200, b"{}", {"Connection": "close"}))

    url, heads = scripted(ok)
    V2HttpConnection(url, timeout_s=5).get_model_metadata("depth model", "3")
    assert heads[0].split(b"\r\n")[0] == b"GET /v2/models/depth%20model/versions/3 HTTP/1.1"


def test_a_truncated_answer_is_the_clients_connection_error(scripted) -> None:
    def truncated(conn, n: int) -> None:
        conn.read()
        conn.send(_answer(200, b"{}")[:-1])  # one byte short of its Content-Length, then closed

    url, _ = scripted(truncated)
    with pytest.raises(DepthConnectionError, match="IncompleteRead"):
        DepthClient(url, timeout_s=5).metadata()


def _self_signed(tmp_path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting only it) for a certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_pem = tmp_path / "cert.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = tmp_path / "key.pem"
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_pem, key_pem)
    return server, ssl.create_default_context(cafile=str(cert_pem))


def test_tls_talks_https_and_an_untrusted_certificate_is_refused(scripted, tmp_path) -> None:
    def ok(conn, n: int) -> None:
        conn.read()
        conn.send(_answer(200, b""))

    server_ctx, trusting = _self_signed(tmp_path)
    url, heads = scripted(ok, tls=server_ctx)
    assert V2HttpConnection(url, timeout_s=5, tls=True, ssl_context=trusting).is_server_ready()
    assert heads == [heads[0]] and heads[0].startswith(b"GET /v2/health/ready")
    with pytest.raises(ssl.SSLCertVerificationError):  # the system's CAs do not know it
        V2HttpConnection(url, timeout_s=5, tls=True).is_server_ready()
    with pytest.raises(DepthConnectionError, match=f"https://{url} unreachable"):
        DepthClient(f"https://{url}", timeout_s=5).metadata()
    with pytest.raises(ValueError, match="https:// is for protocol='http'"):
        DepthClient(f"https://{url}", protocol="grpc")
