"""The built component image, checked on a real Docker Engine (``make images`` first).

Non-root by default, no build-time CA or secret in any layer, its history or its environment,
the project importable with kfp and ONNX Runtime, the CLI working, and the bundled Triton
serving a model inside the image with the deploy task's own smoke test. Skipped, with the
reason, where there is no engine or no image.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
from containers import component_image, docker, engine  # noqa: F401 - fixtures

from components.image import read_images_env

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


def test_no_build_time_ca_or_secret_in_layers_history_or_env(component_image: str) -> None:  # noqa: F811
    config = _config(component_image)
    for entry in config["Env"]:
        key = entry.split("=", 1)[0]
        assert not SECRET_ENV.search(key), f"ENV {entry}"
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", component_image).stdout
    assert "BEGIN CERTIFICATE" not in history and "ca.pem" not in history.replace('/ca.pem"', "")
    bundle = _host_bundle()
    if bundle is None:
        pytest.skip("no host CA bundle (PIP_CERT / SSL_CERT_FILE) to look for")
    assert str(bundle) not in history
    markers = _extra_ca_markers(bundle)
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert _scan_layers(component_image, markers, digest) == []


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
