"""The transformer server as a process (no Triton behind it): slow clients get a 408 and are
closed after --read_timeout_s. Only 127.0.0.1, a few connections, each bounded in time. (The
413/400 refusals are tested on the model in test_transformer_requests.py: without a predictor
kserve answers 503 before preprocess runs.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from depth_common.serving.server import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("transformer") / "log.txt"
    command = [
        sys.executable, "-m", "depth_common.serving.transformer_server",
        "--predictor_host", f"127.0.0.1:{free_port()}",  # nothing listens: no Triton
        "--http_port", str(port), "--read_timeout_s", "1", "--max_connections", "8",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the transformer did not start"
            try:
                urllib.request.urlopen(base + "/v2/health/live", timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_a_request_not_sent_in_time_is_closed(url: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    started = time.monotonic()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
    for sock in socks:
        sock.sendall(b"POST /v1/models/depth:predict HTTP/1.1\r\nHost: x\r\nContent-Len")
    for sock in socks:
        with sock:
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
    assert time.monotonic() - started < 8


def test_the_local_stack_passes_the_limits_of_params() -> None:
    # kserve (the transformer's parser) and tritonclient (the local stack) cannot share a
    # process: the flags are read from the command line built.
    from depth_common.config import DeployConfig
    from depth_common.serving.local_stack import LocalTransformer

    limits = DeployConfig(max_request_pixels=5, max_response_bytes=4096, read_timeout_s=2.5)
    command = LocalTransformer("127.0.0.1:1", limits=limits)._command()
    flags = dict(zip(command[3::2], command[4::2], strict=True))  # after python -m <module>
    assert (flags["--max_request_pixels"], flags["--max_response_bytes"]) == ("5", "4096")
    assert (flags["--read_timeout_s"], flags["--max_connections"]) == ("2.5", "64")
