"""The real local Triton (``tritonserver`` from nvidia-pytriton) serving a Python-backend copy.

One server for the module; a tiny conv net exported by the project's own ONNX export (with its
parity gate) and laid out by ``build_triton_repository`` stands in for the DPT.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import MAX_BATCH, H, TinyDepthNet, W, ort_reference

from depth_common.config import ExportConfig
from depth_common.errors import RepositoryError, TritonServerError
from depth_common.export.onnx import export_model
from depth_common.export.triton import build_triton_repository, parse_model_config
from depth_common.serving.server import LocalTritonServer, build_local_repository, find_triton
from depth_common.serving.supervisor import group_members

pytestmark = pytest.mark.slow


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post(host_port: str, path: str, body: bytes) -> tuple[int, str]:
    host, port = host_port.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def _infer_json(shape: list[int], datatype: str = "FP32", data: list | None = None) -> bytes:
    n = int(np.prod(shape))
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": shape,
                    "datatype": datatype,
                    "data": data if data is not None else [0.5] * n,
                }
            ]
        }
    ).encode()


@pytest.fixture(scope="module")
def server(tiny: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("log") / "triton.log"
    with LocalTritonServer(tiny, log_path=log, ready_timeout_s=60) as srv:
        yield srv


def test_bundled_triton_is_found() -> None:
    install = find_triton()
    assert install.binary.name == "tritonserver" and os.access(install.binary, os.X_OK)
    assert install.stub.parent.name == "3.11"


def test_local_copy_keeps_the_config_and_leaves_out_gpu_models(tmp_path: Path) -> None:
    plan = tmp_path / "fake.plan"
    plan.write_bytes(b"not an engine")  # never loaded: the KIND_GPU model is left out
    onnx_path = export_model(TinyDepthNet(), tmp_path / "m.onnx", img_size=(H, W)).path
    cfg = ExportConfig(max_batch_size=4, preferred_batch_sizes=(2, 4), instance_count=2)
    repo = build_triton_repository(
        onnx_path, tmp_path / "repo", version=3, plan_path=plan, export_cfg=cfg
    )
    before = _tree_digest(repo)

    served = build_local_repository(repo, tmp_path / "local", intra_op_threads=1)

    assert served == ["depth"]
    assert not (tmp_path / "local" / "depth_trt").exists()
    assert _tree_digest(repo) == before  # the cluster repository is only read
    original = parse_model_config(repo / "depth" / "config.pbtxt")
    local = parse_model_config(tmp_path / "local" / "depth" / "config.pbtxt")
    assert original.platform == "onnxruntime_onnx"
    assert (local.platform, local.backend) == ("", "python")
    assert local.max_batch_size == 4 and local.name == "depth"
    assert list(local.input[0].dims) == [3, H, W] and list(local.output[0].dims) == [1, H, W]
    assert list(local.dynamic_batching.preferred_batch_size) == [2, 4]
    assert local.dynamic_batching.max_queue_delay_microseconds == cfg.max_queue_delay_us
    assert local.instance_group[0].count == 2
    assert local.instance_group[0].kind == local.instance_group[0].KIND_CPU
    assert local.model_warmup == original.model_warmup
    assert local.parameters["intra_op_thread_count"].string_value == "1"
    version_dir = tmp_path / "local" / "depth" / "3"
    assert (version_dir / "model.onnx").resolve() == (repo / "depth" / "3" / "model.onnx").resolve()
    assert (version_dir / "model.py").read_text().startswith('"""Triton Python-backend')


@pytest.mark.parametrize(("value", "kept"), [("70.5", "70.5"), ("1e2", "100.0"), ("-3", None),
                                             ("nan", None), ("../x", None)])  # fmt: skip
def test_local_copy_keeps_only_a_numeric_canonical_focal(
    tmp_path: Path, value: str, kept: str | None
) -> None:
    from depth_common.serving.repository import localize_model_config

    cfg = parse_model_config(build_triton_repository(
        export_model(TinyDepthNet(), tmp_path / "m.onnx", img_size=(H, W)).path, tmp_path / "r"
    ) / "depth" / "config.pbtxt")  # fmt: skip
    cfg.parameters["canonical_focal_px"].string_value = value
    local = localize_model_config(cfg, "model.onnx", intra_op_threads=1)
    got = local.parameters.get("canonical_focal_px")
    assert (got.string_value if got is not None else None) == kept


def test_repository_without_a_cpu_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "repo" / "m").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text('name: "m"\nplatform: "tensorrt_plan"\n')
    with pytest.raises(RepositoryError, match="no model the local"):
        build_local_repository(tmp_path / "repo", tmp_path / "local")


def test_live_ready_and_metadata(server: LocalTritonServer, tiny: Path) -> None:
    base = f"http://{server.http_url}"
    assert server.http_url.startswith("127.0.0.1:") and server.grpc_url.startswith("127.0.0.1:")
    assert _get(base + "/v2/health/live")[0] == 200
    assert _get(base + "/v2/health/ready")[0] == 200
    status, body = _get(base + "/v2/models/depth")
    meta = json.loads(body)
    assert status == 200
    assert meta["name"] == "depth" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, H, W]}]
    assert meta["outputs"] == [{"name": "depth", "datatype": "FP32", "shape": [-1, 1, H, W]}]
    config = json.loads(_get(base + "/v2/models/depth/config")[1])
    assert config["backend"] == "python" and config["max_batch_size"] == MAX_BATCH
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    # Metrics are served too, on 127.0.0.1.
    assert _get(f"http://{server.metrics_url}/metrics")[0] == 200
    assert "Started HTTPService at 127.0.0.1" in server.log_path.read_text()
    # The local copy lives elsewhere: nothing was written into the cluster repository.
    assert sorted(p.name for p in (tiny / "depth" / "1").iterdir()) == ["model.onnx"]


def test_raw_json_infer_equals_onnxruntime(server: LocalTritonServer, tiny: Path) -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, H, W)).astype(np.float32)
    status, text = _post(
        server.http_url,
        "/v2/models/depth/infer",
        _infer_json(list(x.shape), data=x.ravel().tolist()),
    )
    assert status == 200, text
    out = json.loads(text)["outputs"][0]
    assert out["shape"] == [2, 1, H, W]
    got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    np.testing.assert_allclose(
        got, ort_reference(tiny / "depth" / "1" / "model.onnx", x), atol=1e-5
    )


@pytest.mark.parametrize(
    ("path", "body", "codes", "message"),
    [
        ("/v2/models/depth/infer", _infer_json([1, 3, H + 1, W]), (400,), "shape"),
        ("/v2/models/depth/infer", _infer_json([3, H, W]), (400,), "shape"),
        ("/v2/models/depth/infer", _infer_json([1, 3, H, W], "FP64"), (400,), "FP64"),
        ("/v2/models/depth/infer", _infer_json([MAX_BATCH + 1, 3, H, W]), (400,), "batch"),
        ("/v2/models/nope/infer", _infer_json([1, 3, H, W]), (400, 404), "nope"),
        ("/v2/models/depth/infer", b'{"inputs": [ {"name": "image", ', (400, 500), "parse"),
        ("/v2/models/depth/infer", _infer_json([1, 3, H, W], data=[0.5] * 7), (400, 500), "shape"),
    ],
    ids=[
        "bad-HW",
        "no-batch-dim",
        "FP64",
        "batch-over-max",
        "unknown-model",
        "unparsable",
        "short-data",
    ],
)
def test_bad_requests_get_an_error_and_the_server_stays_ready(
    server: LocalTritonServer, path: str, body: bytes, codes: tuple[int, ...], message: str
) -> None:
    status, text = _post(server.http_url, path, body)
    assert status in codes, (status, text)
    error = json.loads(text)["error"]
    assert message.lower() in error.lower(), error
    assert _get(f"http://{server.http_url}/v2/health/ready")[0] == 200


def test_start_failure_reports_the_server_log(tiny: Path, tmp_path: Path) -> None:
    broken = tmp_path / "repo"
    (broken / "depth" / "1").mkdir(parents=True)
    (broken / "depth" / "config.pbtxt").write_bytes((tiny / "depth" / "config.pbtxt").read_bytes())
    (broken / "depth" / "1" / "model.onnx").write_bytes(b"this is not an ONNX file")
    server = LocalTritonServer(broken, log_path=tmp_path / "triton.log", ready_timeout_s=60)
    with pytest.raises(TritonServerError, match="(?s)before it was ready.*depth") as info:
        server.start()
    assert "last lines of" in str(info.value)
    assert not server.running() and server.pid is None


def _port_is_free(port: int) -> bool:
    """Nobody listens on 127.0.0.1:port (TIME_WAIT leftovers of closed connections are fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_clean_shutdown_also_on_an_exception(tiny: Path, tmp_path: Path) -> None:
    log = tmp_path / "triton.log"
    with pytest.raises(KeyError), LocalTritonServer(tiny, log_path=log) as srv:  # noqa: PT012
        pid = srv.pid
        ports = (srv.http_port, srv.grpc_port, srv.metrics_port)
        workdir = srv._workdir
        assert srv.running() and _get(f"http://{srv.http_url}/v2/health/ready")[0] == 200
        raise KeyError("the caller fails while the server runs")
    assert not srv.running()
    assert _live_group_members(pid) == []  # the server and its Python-backend stubs are gone
    assert all(_port_is_free(p) for p in ports)
    assert workdir is not None and not workdir.exists()  # the local repository copy is deleted
    # SIGTERM was enough: Triton unloaded the model itself (no SIGKILL needed).
    assert "successfully unloaded" in log.read_text()
    srv.stop()  # idempotent


class _FakePbUtils:
    """The slice of ``triton_python_backend_utils`` that model.py uses, for a direct test."""

    class Tensor:
        def __init__(self, name: str, array: np.ndarray) -> None:
            self.name, self.array = name, array

        def as_numpy(self) -> np.ndarray:
            return self.array

    class TritonError:
        def __init__(self, message: str) -> None:
            self.message = message

    class InferenceResponse:
        def __init__(self, output_tensors: list, error: object = None) -> None:
            self.output_tensors, self.error = output_tensors, error

    @staticmethod
    def get_input_tensor_by_name(request: dict, name: str) -> _FakePbUtils.Tensor:
        return _FakePbUtils.Tensor(name, request[name])


def _load_model_py(tiny: Path, monkeypatch: pytest.MonkeyPatch):
    import importlib.util
    import sys

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _FakePbUtils)
    path = Path(__file__).parents[2] / "depth_common" / "serving" / "python_backend.py"
    spec = importlib.util.spec_from_file_location("depth_model_py_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = parse_model_config(tiny / "depth" / "config.pbtxt")
    from google.protobuf import json_format

    model.initialize(
        {
            "model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
            "model_repository": str(tiny / "depth"),
            "model_version": "1",
        }
    )
    return model


def test_model_py_runs_a_dynamic_batch_as_one_call_and_splits_it(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _load_model_py(tiny, monkeypatch)
    calls: list[tuple[int, ...]] = []
    real_run = model.session.run

    def counting_run(names, feeds):
        calls.append(feeds["image"].shape)
        return real_run(names, feeds)

    model.session.run = counting_run
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n, 3, H, W)).astype(np.float32) for n in (1, 3, 2)]
    responses = model.execute([{"image": b} for b in batches])
    assert calls == [(6, 3, H, W)]  # three requests, one ONNX Runtime call
    onnx_path = tiny / "depth" / "1" / "model.onnx"
    for response, batch in zip(responses, batches, strict=True):
        assert response.error is None
        (out,) = response.output_tensors
        assert out.name == "depth" and out.array.dtype == np.float32
        np.testing.assert_allclose(out.array, ort_reference(onnx_path, batch), atol=1e-5)


def test_model_py_reports_an_ort_failure_to_every_request(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _load_model_py(tiny, monkeypatch)
    bad = np.zeros((1, 3, H, W + 1), np.float32)  # ORT refuses the width
    responses = model.execute([{"image": bad}, {"image": bad}])
    assert len(responses) == 2
    for r in responses:
        assert r.output_tensors == [] and "inference failed" in r.error.message


def _live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies (a container's init may not reap)."""
    return group_members(pgid)
