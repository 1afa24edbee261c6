"""The built images, checked on a real Docker Engine (``make images`` first).

The component image: non-root by default, no build-time CA or secret in any layer, its history
or its environment, the project importable with kfp and ONNX Runtime, the CLI working, and the
bundled Triton serving a model inside the image with the deploy task's own smoke test.
The transformer image: the same user and CA checks, exactly its lock installed (no torch), its
server's CLI, and the container itself, on the host network, in front of a local Triton,
answering v1 and v2 image requests as ONNX Runtime does in-process. Skipped, with the reason,
where there is no engine or no image.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from containers import component_image, docker, engine, transformer_image  # noqa: F401

from depth_common.config.container_images import read_images_env

pytestmark = [pytest.mark.container, pytest.mark.slow]
ENV = read_images_env()
# What a containerized task gets (pipelines.docker_run.runner_options).
LOCKED_DOWN = ["--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--network", "none"]
SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|ACCESS_KEY|CERT|CA_BUNDLE", re.I)


def run_in(image: str, *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return docker("run", "--rm", *LOCKED_DOWN, "--shm-size", "256m", image, *cmd, timeout=timeout)


def _config(image: str) -> dict:
    return json.loads(docker("image", "inspect", image).stdout)[0]["Config"]


def test_runs_as_its_non_root_user(component_image: str) -> None:  # noqa: F811
    assert _config(component_image)["User"] == "10001:10001"
    assert run_in(component_image, "id", "-u").stdout.strip() == "10001"
    # The installed environment is not writable by that user (nothing can be pip-installed
    # into it at run time); its home is.
    out = run_in(
        component_image, "sh", "-c", "test -w /opt/venv/lib; echo $?; test -w $HOME; echo $?"
    )
    assert out.stdout.split() == ["1", "0"]


def test_labels_name_source_revision_and_version(component_image: str) -> None:  # noqa: F811
    labels = _config(component_image)["Labels"]
    assert labels["org.opencontainers.image.version"] == ENV["COMPONENT_TAG"]
    assert labels["org.opencontainers.image.source"] == ENV["SOURCE_URL"]
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", labels["org.opencontainers.image.revision"])


def _host_bundle() -> Path | None:
    for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        if os.environ.get(name) and Path(os.environ[name]).is_file():
            return Path(os.environ[name])
    return None


def _pem_bodies(text: str) -> list[str]:
    return re.findall(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END CERTIFICATE-----", text, re.S)


def _extra_ca_markers(bundle: Path) -> list[bytes]:
    """A line from the body of each certificate of ``bundle`` that no public trust store holds
    (certifi, Debian's ca-certificates: both are in the image on purpose). Those are the CAs
    a build behind a proxy needed, e.g. a locally added one."""
    import certifi

    public = set(_pem_bodies(Path(certifi.where()).read_text()))
    for crt in Path("/usr/share/ca-certificates").rglob("*.crt"):
        public |= set(_pem_bodies(crt.read_text(errors="replace")))
    markers = []
    for body in _pem_bodies(bundle.read_text()):
        if body not in public:
            lines = body.split()
            markers.append(lines[len(lines) // 2].encode())
    return markers


def _scan_layers(image: str, needles: list[bytes], digest: str) -> list[str]:
    """Files in any layer of ``image`` holding a needle or whose sha256 is ``digest``."""
    hits = []
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    with tarfile.open(fileobj=save.stdout, mode="r|") as outer:
        for member in outer:
            if not member.name.endswith("layer.tar"):
                continue
            with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as layer:
                for entry in layer:
                    if not entry.isfile() or entry.size > 8 << 20:
                        continue
                    data = layer.extractfile(entry).read()
                    if hashlib.sha256(data).hexdigest() == digest or any(
                        n in data for n in needles
                    ):
                        hits.append(f"{member.name}:{entry.name}")
    assert save.wait() == 0
    return hits


@pytest.fixture(params=["component", "transformer"])
def built_image(request: pytest.FixtureRequest) -> str:
    """Each image ``images/build.sh`` builds with the CA bundle, in turn."""
    return request.getfixturevalue(f"{request.param}_image")


def test_no_build_time_ca_or_secret_in_layers_history_or_env(built_image: str) -> None:
    config = _config(built_image)
    for entry in config["Env"]:
        key = entry.split("=", 1)[0]
        assert not SECRET_ENV.search(key), f"ENV {entry}"
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", built_image).stdout
    assert "BEGIN CERTIFICATE" not in history and "ca.pem" not in history.replace('/ca.pem"', "")
    bundle = _host_bundle()
    if bundle is None:
        pytest.skip("no host CA bundle (PIP_CERT / SSL_CERT_FILE) to look for")
    assert str(bundle) not in history
    markers = _extra_ca_markers(bundle)
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert _scan_layers(built_image, markers, digest) == []


def test_project_kfp_onnxruntime_and_cli_work(component_image: str) -> None:  # noqa: F811
    out = run_in(
        component_image,
        "python",
        "-c",
        "import depth_common, components, kfp, onnxruntime, torch, timm, mlflow; "
        "print(kfp.__version__, onnxruntime.__version__, torch.__version__)",
    )
    kfp_version, _, torch_version = out.stdout.split()
    assert kfp_version.startswith("2.17.") and torch_version.split("+")[0] == "2.14.1"
    assert "usage:" in run_in(component_image, "python", "-m", "depth_common", "--help").stdout


TRITON_SMOKE = """
import json, tempfile, torch
from pathlib import Path
from depth_common.config import ExportConfig
from depth_common.export.onnx import export_model
from depth_common.export.triton import build_triton_repository
from depth_common.deploy.local import deploy_local

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)
    def forward(self, x):
        return torch.nn.functional.softplus(self.conv(x)) * 10.0

root = Path(tempfile.mkdtemp())
onnx = export_model(Net(), root / "model.onnx", img_size=(32, 64)).path
repo = build_triton_repository(onnx, root / "repo", export_cfg=ExportConfig(max_batch_size=4,
    preferred_batch_sizes=(2, 4)))
result = deploy_local(repo, root / "served", model_name="depth")
print(json.dumps({"ok": result.smoke.ok, "endpoint": result.endpoint,
                  "installed": result.source, "detail": result.smoke.detail}))
"""


def test_tritonserver_serves_a_model_inside_the_image(component_image: str) -> None:  # noqa: F811
    out = run_in(component_image, "python", "-c", TRITON_SMOKE)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"], result["detail"]
    assert result["endpoint"].startswith("http://127.0.0.1:")
    assert result["installed"].endswith("/served")


# -- the transformer image ---------------------------------------------------------------------

NOT_IN_TRANSFORMER = ("torch", "torchvision", "onnx", "onnxruntime", "tritonclient")


def run_transformer(image: str, entrypoint: str, *args: str) -> subprocess.CompletedProcess:
    """``entrypoint ARGS`` in ``image`` as the pod runs it: read-only root, no capabilities."""
    return docker("run", "--rm", *LOCKED_DOWN, "--read-only", "--entrypoint", entrypoint,
                  image, *args, timeout=120)  # fmt: skip


def test_transformer_runs_as_its_non_root_user_with_its_labels(transformer_image: str) -> None:  # noqa: F811
    config = _config(transformer_image)
    assert config["User"] == "10001:10001"
    assert run_transformer(transformer_image, "id", "-u").stdout.strip() == "10001"
    # Neither the environment nor the code can be changed by that user at run time.
    out = run_transformer(
        transformer_image, "sh", "-c", "test -w /opt/venv/lib; echo $?; test -w /app; echo $?"
    )
    assert out.stdout.split() == ["1", "1"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == ENV["TRANSFORMER_TAG"]
    assert labels["org.opencontainers.image.source"] == ENV["SOURCE_URL"]
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", labels["org.opencontainers.image.revision"])


def test_transformer_holds_exactly_its_lock_and_no_torch(transformer_image: str) -> None:  # noqa: F811
    from packaging.utils import canonicalize_name

    from depth_common.config.container_images import images_env_path

    lock_path = images_env_path().parent / "transformer" / "requirements.lock"
    locked = {
        canonicalize_name(name): version
        for name, _, version in (
            ln.split()[0].partition("==")
            for ln in lock_path.read_text().splitlines()
            if ln and not ln.startswith("#")
        )
    }
    out = run_transformer(transformer_image, "python", "-m", "pip", "list", "--format", "json")
    installed = {canonicalize_name(p["name"]): p["version"] for p in json.loads(out.stdout)}
    assert {n: installed.get(n) for n in locked} == locked
    assert set(installed) - set(locked) == {"pip"}  # the venv's own pip, nothing unlocked
    probe = "import importlib.util as u; print([m for m in %r if u.find_spec(m)])"
    found = run_transformer(transformer_image, "python", "-c", probe % (NOT_IN_TRANSFORMER,))
    assert found.stdout.strip() == "[]"


def test_transformer_server_cli_works(transformer_image: str) -> None:  # noqa: F811
    out = docker("run", "--rm", *LOCKED_DOWN, "--read-only", transformer_image, "--help")
    assert out.stdout.startswith("usage: python -m depth_common.serving.transformer_server")
    for flag in ("--predictor_host", "--http_port", "--max_pixels", "--max_request_bytes"):
        assert flag in out.stdout, flag


def _wait_ready(name: str, url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{url}/v2/models/depth/ready", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        state = docker("inspect", "-f", "{{.State.Running}}", name, check=False).stdout.strip()
        assert state == "true", f"the transformer container exited:\n{docker('logs', name).stderr}"
        time.sleep(0.5)
    raise AssertionError(f"{url}: not ready after {timeout_s} s:\n{docker('logs', name).stderr}")


@contextlib.contextmanager
def _transformer_container(image: str, predictor: str, port: int) -> Iterator[str]:
    """The image on the host network (Triton's gRPC on 127.0.0.1), as the pod runs it."""
    name = f"depth-transformer-test-{os.getpid()}-{port}"
    docker("run", "-d", "--name", name, "--network", "host", "--read-only", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges", image, "--predictor_host", predictor,
           "--host", "127.0.0.1", "--http_port", str(port))  # fmt: skip
    try:
        yield name
    finally:
        print(docker("logs", name, check=False).stderr[-4000:])  # shown when the test fails
        docker("rm", "-f", name, check=False)


def test_transformer_container_answers_v1_and_v2_as_onnxruntime_does(
    transformer_image: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    from helpers import build_tiny_repository

    from depth_common.deploy.smoke import image_reference, smoke_test_image
    from depth_common.serving.client import DepthClient
    from depth_common.serving.server import LocalTritonServer, free_port

    repo = build_tiny_repository(tmp_path)
    onnx_path = repo / "depth" / "1" / "model.onnx"
    port = free_port()
    url = f"127.0.0.1:{port}"
    with (
        LocalTritonServer(repo, log_path=tmp_path / "triton.log") as triton,
        _transformer_container(transformer_image, triton.grpc_url, port) as name,
    ):
        _wait_ready(name, url)
        result = smoke_test_image(url, onnx_path=onnx_path)  # v2 and v1, PNG
        assert result.ok, result.detail
        assert result.output_shape == (96, 160) and result.max_abs_diff <= 1e-3
        photo = pytest.importorskip("skimage.data").__file__
        jpeg = (Path(photo).parent / "rocket.jpg").read_bytes()
        with DepthClient(url, mode="image") as client:
            (depth,) = client.predict(jpeg)  # JPEG decoding in the image's own Pillow
            assert np.abs(depth - image_reference(onnx_path, jpeg)).max() <= 1e-3
            body = json.dumps({"instances": [{"image_bytes": {"b64": "aGVsbG8gd29ybGQ="}}]})
            request = urllib.request.Request(
                f"http://{url}/v1/models/depth:predict", body.encode(), method="POST",
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 400
            assert "not a readable image" in json.loads(refused.value.read())["error"]
            assert client.ready()  # still serving after the bad request
