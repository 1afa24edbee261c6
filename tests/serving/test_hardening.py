"""The local serving path against what the peer test and the red team tried: hostile
repositories, leaked secrets, admin APIs, taken ports, a crashing server, ``kill -9``.

Real ``tritonserver`` processes throughout; every kill targets a process group these tests
started themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import H, W

from depth_common.errors import DepthServingError, RepositoryError, TritonServerError
from depth_common.export.triton import parse_model_config, write_model_config
from depth_common.serving.client import DepthClient
from depth_common.serving.repository import build_local_repository
from depth_common.serving.server import LocalTritonServer, free_port
from depth_common.serving.supervisor import group_members

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tiny: Path, tmp_path_factory: pytest.TempPathFactory):
    os.environ["AWS_SECRET_ACCESS_KEY"] = "do-not-leak"  # noqa: S105 - a canary, not a secret
    os.environ["HF_TOKEN"] = "hf_do_not_leak"  # noqa: S105
    try:
        log = tmp_path_factory.mktemp("log") / "triton.log"
        with LocalTritonServer(tiny, log_path=log) as srv:
            yield srv
    finally:
        os.environ.pop("AWS_SECRET_ACCESS_KEY")
        os.environ.pop("HF_TOKEN")


def _copy_repo(tiny: Path, dest: Path) -> Path:
    shutil.copytree(tiny, dest)
    return dest


def _edit_config(repo: Path, edit) -> None:
    path = repo / "depth" / "config.pbtxt"
    cfg = parse_model_config(path)
    edit(cfg)
    write_model_config(cfg, path)


# -- hostile repositories --------------------------------------------------------------------


def test_parameters_of_the_repository_never_reach_the_backend(tiny: Path, tmp_path: Path) -> None:
    repo = _copy_repo(tiny, tmp_path / "repo")
    payload = tmp_path / "evil.tar.gz"  # what EXECUTION_ENV_PATH would make the stub source

    def edit(cfg) -> None:
        cfg.parameters["EXECUTION_ENV_PATH"].string_value = str(payload)
        cfg.parameters["intra_op_thread_count"].string_value = "2"
        cfg.parameters["onnx_file"].string_value = "../../etc/passwd"
        cfg.optimization.priority = cfg.optimization.PRIORITY_MAX  # not on the allow-list
        cfg.version_policy.all.SetInParent()

    _edit_config(repo, edit)
    build_local_repository(repo, tmp_path / "local")
    local = parse_model_config(tmp_path / "local" / "depth" / "config.pbtxt")
    assert dict(local.parameters).keys() == {"onnx_file", "intra_op_thread_count"}
    assert local.parameters["onnx_file"].string_value == "model.onnx"
    assert local.parameters["intra_op_thread_count"].string_value == "2"
    assert not local.HasField("optimization")
    # the version policy only picks numeric version directories of the copy (the local canary
    # serves champion and challenger as two versions): it is carried over as it is
    assert local.version_policy.WhichOneof("policy_choice") == "all"
    # and the server runs it, with the backend never told about the archive
    log = tmp_path / "triton.log"
    with LocalTritonServer(repo, log_path=log) as srv:
        assert DepthClient(srv.grpc_url, "grpc").ready()
    assert str(payload) not in log.read_text()


@pytest.mark.parametrize("name", ["../evil.onnx", "sub/model.onnx", "..", "/etc/hosts"])
def test_default_model_filename_must_be_a_plain_name(tiny: Path, tmp_path: Path, name: str) -> None:
    repo = _copy_repo(tiny, tmp_path / "repo")
    _edit_config(repo, lambda cfg: setattr(cfg, "default_model_filename", name))
    with pytest.raises(RepositoryError, match="default_model_filename.*not a plain file name"):
        build_local_repository(repo, tmp_path / "local")
    assert not list((tmp_path / "local").rglob("*")) if (tmp_path / "local").exists() else True


def test_a_model_file_linking_outside_the_repository_is_refused(tiny: Path, tmp_path: Path) -> None:
    repo = _copy_repo(tiny, tmp_path / "repo")
    outside = tmp_path / "outside.onnx"
    (repo / "depth" / "1" / "model.onnx").rename(outside)
    os.symlink(outside, repo / "depth" / "1" / "model.onnx")
    with pytest.raises(RepositoryError, match="outside the repository"):
        build_local_repository(repo, tmp_path / "local")


def test_a_python_backend_model_of_the_repository_is_never_run(tiny: Path, tmp_path: Path) -> None:
    repo = _copy_repo(tiny, tmp_path / "repo")
    marker = tmp_path / "ran"
    evil = repo / "evil" / "1"
    evil.mkdir(parents=True)
    (evil / "model.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    (repo / "evil" / "config.pbtxt").write_text('name: "evil"\nbackend: "python"\n')
    (repo / "bad name").mkdir()
    served = build_local_repository(repo, tmp_path / "local")
    assert served == ["depth"] and not (tmp_path / "local" / "evil").exists()
    assert not marker.exists()


def test_warmup_reading_a_file_is_dropped(tiny: Path, tmp_path: Path) -> None:
    repo = _copy_repo(tiny, tmp_path / "repo")

    def edit(cfg) -> None:
        sample = cfg.model_warmup.add(name="from_file", batch_size=1)
        sample.inputs["image"].data_type = cfg.input[0].data_type
        sample.inputs["image"].dims.extend([3, H, W])
        sample.inputs["image"].input_data_file = "../../../../etc/shadow"

    _edit_config(repo, edit)
    build_local_repository(repo, tmp_path / "local")
    local = parse_model_config(tmp_path / "local" / "depth" / "config.pbtxt")
    assert [w.name for w in local.model_warmup] == ["zero_image_batch_1"]


def test_a_config_naming_another_model_is_refused(tiny: Path, tmp_path: Path) -> None:
    repo = _copy_repo(tiny, tmp_path / "repo")
    _edit_config(repo, lambda cfg: setattr(cfg, "name", "other"))
    with pytest.raises(RepositoryError, match="name 'other' differs from its directory 'depth'"):
        build_local_repository(repo, tmp_path / "local")


# -- what the running server exposes ---------------------------------------------------------


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in raw if b"=" in e)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, IndexError):
            continue
    return kids


def test_the_server_and_its_stubs_see_no_secret(server: LocalTritonServer) -> None:
    triton = server.triton_pid
    stubs = _children(triton)
    assert stubs, "the Python backend runs its model in a stub process"
    for pid in [server.pid, triton, *stubs]:
        env = _environ(pid)
        assert "AWS_SECRET_ACCESS_KEY" not in env and "HF_TOKEN" not in env, pid
        assert "do-not-leak" not in json.dumps(env)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "do-not-leak"  # the test's own env has it


def _status(url: str, method: str = "GET", headers: dict | None = None, body: bytes = b""):
    req = urllib.request.Request(url, data=body or None, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/depth/stats"),
        ("POST", "/v2/repository/index"),
        ("POST", "/v2/repository/models/depth/unload"),
        ("GET", "/v2/systemsharedmemory/status"),
        ("POST", "/v2/systemsharedmemory/region/r/register"),
        ("GET", "/v2/trace/setting"),
        ("GET", "/v2/logging"),
    ],
)
def test_admin_apis_are_refused(server: LocalTritonServer, method: str, path: str) -> None:
    base = f"http://{server.http_url}"
    code, body = _status(base + path, method)
    assert code == 403 and b"restricted" in body, (code, body)
    assert _status(base + "/v2/health/ready")[0] == 200  # still serving, model still loaded
    assert _status(base + "/v2/models/depth/config")[0] == 200  # clients need this one


def test_no_key_is_on_the_command_line_and_the_admin_apis_are_off(
    server: LocalTritonServer,
) -> None:
    """/proc/PID/cmdline is readable by every local user: it holds no key that opens anything.
    The header the admin APIs require has a line break in its value, which no HTTP request
    can carry (a raw socket tries the ways a parser might fold it) and gRPC refuses."""
    import socket

    argv = Path(f"/proc/{server.triton_pid}/cmdline").read_bytes().split(b"\0")
    restricted = [a for a in argv if a.startswith(b"--http-restricted-api=")]
    assert restricted == [b"--http-restricted-api=shared-memory,statistics,model-repository,"
                          b"trace,logging:depth-api=off\n"]  # fmt: skip
    host, port = server.http_url.split(":")
    for header in (b"depth-api: off", b"depth-api: off\n", b"depth-api: off\r\n ",
                   b"depth-api: off\n ", b"depth-api: off\\n", b"depth-api: off\r"):  # fmt: skip
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /v2/models/depth/stats HTTP/1.1\r\nHost: x\r\n" + header
                         + b"\r\nConnection: close\r\n\r\n")  # fmt: skip
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        assert not reply.startswith(b"HTTP/1.1 200"), (header, reply[:200])
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(server.grpc_url)
    for value in ("off", "off\n"):
        with pytest.raises(InferenceServerException, match="restricted|Invalid metadata"):
            client.get_inference_statistics(
                "depth", headers={"triton-grpc-protocol-depth-api": value}, client_timeout=10
            )
    assert _status(f"http://{server.http_url}/v2/health/ready")[0] == 200


def test_a_taken_port_is_refused_and_the_first_server_keeps_serving(
    server: LocalTritonServer, tiny: Path
) -> None:
    second = LocalTritonServer(tiny, http_port=server.http_port)
    with pytest.raises(
        TritonServerError, match=f"HTTP port 127.0.0.1:{server.http_port} is already"
    ):
        second.start()
    assert not second.running()
    with DepthClient(server.http_url) as client:
        assert client.ready()


# -- crashes and kills -----------------------------------------------------------------------


def test_killed_tritonserver_under_load_is_restarted(tiny: Path, tmp_path: Path) -> None:
    log = tmp_path / "triton.log"
    x = np.random.default_rng(0).standard_normal((1, 3, H, W)).astype(np.float32)
    with LocalTritonServer(tiny, log_path=log) as srv:
        served, failed, stop = [], [], threading.Event()

        def load() -> None:
            with DepthClient(srv.grpc_url, "grpc", timeout_s=5) as client:
                while not stop.is_set():
                    try:
                        served.append(client.infer_tensor(x).shape)
                    except DepthServingError as exc:
                        failed.append(str(exc))
                        time.sleep(0.05)

        worker = threading.Thread(target=load)
        worker.start()
        try:
            while len(served) < 5:
                time.sleep(0.05)
            first = srv.triton_pid
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 90
            while srv.triton_pid == first or not failed:
                assert time.monotonic() < deadline, "no restart within 90 s"
                time.sleep(0.1)
            after_kill = len(served)
            while len(served) < after_kill + 5:
                assert time.monotonic() < deadline, f"not serving again: {failed[-1:]}"
                time.sleep(0.1)
        finally:
            stop.set()
            worker.join()
        assert srv.restarts == 1 and srv.running()
        assert "killed by SIGKILL; restart 1 in" in log.read_text()
        assert set(served) == {(1, 1, H, W)}


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout_s: float) -> str:
    out, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        out.append(line)
        if needle in line:
            return "".join(out)
    raise AssertionError(f"{needle!r} not printed; output so far:\n{''.join(out)}")


def test_kill_9_of_serve_leaves_no_process_temp_dir_or_shared_memory(
    tiny: Path, tmp_path: Path
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "depth_common", "serve", "--repository", str(tiny),
           "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
           "--transformer-port", "0", "--log", str(tmp_path / "logs" / "triton.log")]  # fmt: skip
    # Its own session: the test kills only what it started.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)  # fmt: skip
    try:
        _wait_for_line(proc, "Ctrl-C to stop", 180)
        supervisors = _children(proc.pid)
        assert len(supervisors) == 2  # Triton's and the transformer's
        groups = {pid: group_members(pid) for pid in supervisors}
        assert all(len(members) >= 2 for members in groups.values()), groups
        workdirs = sorted(p.name for p in tmp.iterdir())
        assert any(n.startswith("depth-triton-") for n in workdirs), workdirs
        assert any(n.startswith("depth-transformer-") for n in workdirs), workdirs
        triton_dir = next(n for n in workdirs if n.startswith("depth-triton-"))
        assert list(Path("/dev/shm").glob(f"{triton_dir}-*")), "the stub's shm region"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 60
        while any(group_members(pgid) for pgid in supervisors):
            assert time.monotonic() < deadline, {p: group_members(p) for p in supervisors}
            time.sleep(0.2)
        # (tritonserver itself drops a `.ses` file in TMPDIR; nothing of ours is left.)
        assert [p.name for p in tmp.iterdir() if p.name.startswith("depth-")] == []
        assert list(Path("/dev/shm").glob(f"{triton_dir}-*")) == []
    finally:
        for pgid in [proc.pid, *locals().get("supervisors", [])]:
            if group_members(pgid):
                os.killpg(pgid, signal.SIGKILL)
        proc.stdout.close()


def test_serve_refuses_a_taken_transformer_port(tiny: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "depth_common", "serve", "--repository", str(tiny),
               "--http-port", str(free_port()), "--grpc-port", "0", "--metrics-port", "0",
               "--transformer-port", str(port), "--log", str(tmp_path / "triton.log")]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"transformer HTTP port 127.0.0.1:{port} is already in use" in out.stderr
