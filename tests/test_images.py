"""The component images, reviewed without an engine: each Dockerfile parsed and checked for a
pinned base, a numeric non-root USER, the project installed from its own files with the
dependency layer before the code, no secrets; the build context; and ``images/build.sh`` run
against a fake ``docker`` (one that has no engine, and one that records what it is asked)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from depth_common.images import read_images_env

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile*"))
# The component images install the whole project; the transformer's (images/transformer) does not.
COMPONENT_DOCKERFILES = sorted((ROOT / "images" / "component").glob("Dockerfile*"))
ENV = read_images_env(ROOT / "images" / "images.env")
SECRETISH = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|ACCESS_KEY|CREDENTIAL|AUTH", re.I)
TOKEN_LITERAL = re.compile(r"hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{20,}")
# TensorRT inside NVIDIA's Triton images (release notes): a plan only loads on the TensorRT that
# built it, so the CUDA image's TensorRT must follow the Triton tag.
TRITON_TENSORRT = {"24.08": "10.3", "24.09": "10.4", "24.10": "10.5", "24.12": "10.7"}


def parse(path: Path) -> list[tuple[str, str]]:
    """Dockerfile → [(INSTRUCTION, arguments)], comments dropped, continuations joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _args(instrs: list[tuple[str, str]]) -> dict[str, str]:
    args = {}
    for word, rest in instrs:
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    return args


def test_there_is_a_cpu_and_a_cuda_image() -> None:
    assert [p.name for p in COMPONENT_DOCKERFILES] == ["Dockerfile", "Dockerfile.cuda"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_is_pinned(path: Path) -> None:
    instrs = parse(path)
    args = _args(instrs)
    bases = [rest.split()[0] for word, rest in instrs if word == "FROM"]
    assert bases
    for base in bases:
        base = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], base)
        name, _, tag = base.partition("@")[0].rpartition(":")
        assert "@sha256:" in base or (name and tag and tag != "latest"), f"{path}: FROM {base}"
        assert re.search(r"\d", tag or base), f"{path}: FROM {base} has no version in its tag"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_a_numeric_non_root_user(path: Path) -> None:
    instrs = parse(path)
    users = [(i, rest) for i, (word, rest) in enumerate(instrs) if word == "USER"]
    assert users, f"{path}: no USER (would run as root)"
    last_index, last = users[-1]
    uid = last.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{path}: USER {last} (numeric, non-zero expected)"
    later = [word for word, _ in instrs[last_index + 1 :]]
    assert "RUN" not in later and "USER" not in later  # nothing after it runs as someone else
    assert any(f"--uid {uid}" in rest for word, rest in instrs if word == "RUN")


@pytest.mark.parametrize("path", COMPONENT_DOCKERFILES, ids=lambda p: p.name)
def test_project_installed_from_its_own_files_deps_first(path: Path) -> None:
    instrs = parse(path)

    def index(pred) -> int:
        found = [i for i, ins in enumerate(instrs) if pred(*ins)]
        assert found, f"{path}: expected instruction not found"
        return found[0]

    copy_pyproject = index(lambda w, r: w == "COPY" and r.split()[0] == "pyproject.toml")
    deps = index(lambda w, r: w == "RUN" and "pyproject.toml" in r and "pip install" in r)
    copy_code = index(lambda w, r: w == "COPY" and r.startswith("depth_common"))
    install = index(lambda w, r: w == "RUN" and re.search(r"pip install --no-deps \.(\s|$)", r))
    assert copy_pyproject < deps < copy_code < install
    deps_cmd = instrs[deps][1]
    assert "['project']['dependencies']" in deps_cmd  # the same list the venv installs
    # No dependency list of its own: nothing installed by name except the CUDA extras.
    assert "requirements.txt" in deps_cmd
    copied = [instrs[i][1].split()[0] for i in range(len(instrs)) if instrs[i][0] == "COPY"]
    for src in copied:
        assert (ROOT / src).exists(), f"{path}: COPY {src}: no such file in the repository"
    assert ("ENV", "DEPTH_MANIFESTS_DIR=/app/manifests") in instrs


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_no_secrets_baked_in(path: Path) -> None:
    for word, rest in parse(path):
        if word in ("ENV", "ARG", "LABEL"):
            for key in re.findall(r"(\w+)=", rest) or [rest.split()[0]]:
                assert not SECRETISH.search(key), f"{path}: {word} {key} looks like a secret"
        assert not TOKEN_LITERAL.search(rest), f"{path}: a literal token in {word}"
        if word == "COPY":
            assert not re.search(r"(^|[\s/])\.env\b|token|secret|\.kube|\.netrc", rest, re.I)


def test_cuda_image_tensorrt_matches_the_serving_triton() -> None:
    args = _args(parse(ROOT / "images" / "component" / "Dockerfile.cuda"))
    release = ENV["TRITON_TAG"].split("-")[0]
    assert release in TRITON_TENSORRT, f"add Triton {release}'s TensorRT version to this table"
    assert args["TENSORRT_VERSION"].startswith(TRITON_TENSORRT[release] + ".")


def test_build_context_is_the_sources_only() -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "**"  # exclude everything, then allow the sources
    allowed = {ln[1:].removesuffix("/**") for ln in lines if ln.startswith("!")}
    for path in DOCKERFILES:
        for word, rest in parse(path):
            if word == "COPY" and not rest.startswith("--from"):
                src = rest.split()[0]
                assert src.rstrip("/") in allowed, f".dockerignore keeps out COPY {src}"
    for private in (".venv", ".git", "data", "saved_models", "mlflow.db", "runs"):
        assert private not in allowed


def _fake_engine(tmp_path: Path, info_ok: bool) -> tuple[dict[str, str], Path]:
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("docker", "podman"):
        fake = bin_dir / name
        status = 0 if (info_ok and name == "docker") else 1
        fake.write_text(
            "#!/bin/sh\n"
            f'echo "{name} $*" >> "{log}"\n'
            f'if [ "$1" = info ]; then exit {status}; fi\n'
            "exit 0\n"
        )
        fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("ENGINE", "PUSH")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env, log


def test_build_script_without_an_engine_says_so(tmp_path: Path) -> None:
    env, log = _fake_engine(tmp_path, info_ok=False)
    out = subprocess.run(
        ["bash", str(ROOT / "images" / "build.sh")], env=env, capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "no running container engine" in out.stderr and "images.yml" in out.stderr
    assert "build" not in log.read_text()


def test_build_script_builds_and_pushes_the_names_of_images_env(tmp_path: Path) -> None:
    env, log = _fake_engine(tmp_path, info_ok=True)
    out = subprocess.run(
        ["bash", str(ROOT / "images" / "build.sh")], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    cpu = f"{ENV['REGISTRY']}/{ENV['COMPONENT_IMAGE']}:{ENV['COMPONENT_TAG']}"
    cuda = f"{ENV['REGISTRY']}/{ENV['COMPONENT_IMAGE']}:{ENV['COMPONENT_CUDA_TAG']}"
    calls = [c for c in log.read_text().splitlines() if not c.endswith(" info")]
    assert calls == [
        f"docker build -f images/component/Dockerfile -t {cpu} .",
        f"docker build -f images/component/Dockerfile.cuda -t {cuda} .",
        f"docker push {cpu}",
        f"docker push {cuda}",
    ]
