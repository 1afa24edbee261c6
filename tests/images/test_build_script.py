"""``images/build.sh`` and ``images/engine.sh`` run against a fake ``docker``: one with no
engine, one that records what it is asked and can fail a build (tags, build arguments, labels,
what reaches the build command, option errors)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from helpers import CPU_IMAGE, CUDA_IMAGE, IMAGES_ENV, ROOT

TRANSFORMER_IMAGE = (
    f"{IMAGES_ENV['REGISTRY']}/{IMAGES_ENV['TRANSFORMER_IMAGE']}:{IMAGES_ENV['TRANSFORMER_TAG']}"
)


def _fake_docker(tmp_path: Path, *, engine: bool = True, fail_build: bool = False) -> dict:
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "docker $*" >> "{log}"\n'
        f'if [ "$1" = version ]; then exit {0 if engine else 1}; fi\n'
        f'if [ "$1" = build ]; then exit {1 if fail_build else 0}; fi\n'
        'if [ "$1" = image ] && [ "$2" = inspect ]; then echo 1234000000; fi\n'
        "exit 0\n"
    )
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "BUILD_", "WHEEL"))}
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        DOCKER_HOST=f"unix://{tmp_path}/fake.sock",
        DEPTH_ENGINE_DIR=str(tmp_path / "engine"),
        DEPTH_ENGINE_RUN=str(tmp_path / "run"),
        PREFETCH="0",
    )
    return {"env": env, "log": log}


def _build(fake: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "images" / "build.sh"), *args],
        env=fake["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _calls(fake: dict, verb: str) -> list[str]:
    if not fake["log"].exists():  # docker was never called
        return []
    return [c for c in fake["log"].read_text().splitlines() if c.startswith(f"docker {verb} ")]


def test_build_without_an_engine_says_why_and_builds_nothing(tmp_path: Path) -> None:
    fake = _fake_docker(tmp_path, engine=False)
    # Nothing answers, and the engine script may not set one up (its state directory cannot
    # be made): it must say so and build.sh must stop there.
    fake["env"]["DEPTH_ENGINE_DIR"] = "/proc/no-such-dir"
    out = _build(fake, "component")
    assert out.returncode == 3, out.stderr
    assert "no Docker Engine: cannot create /proc/no-such-dir" in out.stderr
    assert _calls(fake, "build") == []


def test_build_goes_to_a_temporary_tag_then_the_real_one(tmp_path: Path) -> None:
    fake = _fake_docker(tmp_path)
    out = _build(fake, "component", "cuda")
    assert out.returncode == 0, out.stderr
    builds = _calls(fake, "build")
    temporary = [b.split(" -t ")[1].split()[0] for b in builds]
    assert [re.sub(r"-building-\d+$", "", t) for t in temporary] == [CPU_IMAGE, CUDA_IMAGE]
    assert all(re.search(r"-building-\d+$", t) for t in temporary)
    assert "-f images/component/Dockerfile " in builds[0] and "Dockerfile.cuda" in builds[1]
    assert f"COMPONENT_BASE={CPU_IMAGE}" in builds[1]
    assert "org.opencontainers.image.revision=" in builds[0]
    # Lineage: the commit and the image's own name become ENV in the image (no .git there).
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert f"GIT_COMMIT={head.stdout.strip()}" in builds[0]
    assert re.search(r"GIT_DIRTY=(true|false)\b", builds[0])
    assert f"IMAGE_REF={CPU_IMAGE} " in builds[0]
    assert f"org.opencontainers.image.version={IMAGES_ENV['COMPONENT_TAG']}" in builds[0]
    tags = _calls(fake, "tag")
    assert [t.split()[-1] for t in tags] == [CPU_IMAGE, CUDA_IMAGE]
    assert _calls(fake, "push") == []  # pushing is asked for, never implied


def test_a_failed_build_leaves_the_tag_alone(tmp_path: Path) -> None:
    fake = _fake_docker(tmp_path, fail_build=True)
    out = _build(fake, "component")
    assert out.returncode == 1
    assert f"building {CPU_IMAGE} failed" in out.stderr and "left as it was" in out.stderr
    assert _calls(fake, "tag") == []
    assert any("-building-" in c for c in _calls(fake, "rmi"))


def test_the_ca_bundle_never_reaches_the_build_command(tmp_path: Path) -> None:
    fake = _fake_docker(tmp_path)
    ca = tmp_path / "proxy-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIBfakefakefake\n-----END CERTIFICATE-----\n")
    out = _build(fake, "--ca-bundle", str(ca), "--pip-retries", "9", "--offline", "component")
    assert out.returncode == 0, out.stderr
    (build,) = _calls(fake, "build")
    assert str(ca) not in build and "MIIB" not in build
    assert re.search(r"BUILD_FILES_URL=http://127\.0\.0\.1:\d+ ", build)
    assert "PIP_RETRIES=9" in build and "PIP_OFFLINE=1" in build


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ca-bundle", "/no/such.pem"], "--ca-bundle /no/such.pem: not a readable file"),
        (["--wheels", "/no/such/dir"], "--wheels /no/such/dir: not a directory"),
        (["--pip-retries", "many"], "whole numbers expected"),
        (["gpu"], "unknown argument 'gpu'"),
    ],
)
def test_bad_build_options_are_named(tmp_path: Path, args: list[str], message: str) -> None:
    fake = _fake_docker(tmp_path)
    out = _build(fake, *args)
    assert out.returncode == 2 and message in out.stderr
    assert _calls(fake, "build") == []


def test_engine_script_uses_a_running_engine_and_stops_nothing_it_did_not_start(
    tmp_path: Path,
) -> None:
    fake = _fake_docker(tmp_path)
    engine = ["bash", str(ROOT / "images" / "engine.sh")]
    out = subprocess.run([*engine, "start"], env=fake["env"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        f"DOCKER_HOST={fake['env']['DOCKER_HOST']}",
        "DEPTH_ENGINE_STARTED=0",
    ]
    out = subprocess.run([*engine, "stop"], env=fake["env"], capture_output=True, text=True)
    assert out.returncode == 0 and "nothing to stop" in out.stderr


def test_the_transformer_image_is_built_when_images_env_names_it_and_its_dockerfile_exists(
    tmp_path: Path,
) -> None:
    fake = _fake_docker(tmp_path)
    env_file = tmp_path / "images.env"
    env_file.write_text(
        (ROOT / "images" / "images.env").read_text()
        + "TRANSFORMER_IMAGE=depth-transformer\nTRANSFORMER_TAG=0.1.0\n"
    )
    fake["env"]["IMAGES_ENV"] = str(env_file)
    has_dockerfile = (ROOT / "images" / "transformer" / "Dockerfile").is_file()
    out = _build(fake, "transformer")
    image = f"{IMAGES_ENV['REGISTRY']}/depth-transformer:0.1.0"
    if has_dockerfile:
        assert out.returncode == 0, out.stderr
        assert [t.split()[-1] for t in _calls(fake, "tag")] == [image]
        assert "-f images/transformer/Dockerfile " in _calls(fake, "build")[0]
    else:
        assert out.returncode == 2 and "images/transformer/Dockerfile does not exist" in out.stderr
        # By default only the images whose Dockerfile exists are built.
        out = _build(fake)
        assert out.returncode == 0, out.stderr
        assert [t.split()[-1] for t in _calls(fake, "tag")] == [CPU_IMAGE, CUDA_IMAGE]
    fake["env"]["IMAGES_ENV"] = str(ROOT / "images" / "images.env")
    if "TRANSFORMER_IMAGE" not in IMAGES_ENV:
        out = _build(fake, "transformer")
        assert out.returncode == 2 and "names no such image" in out.stderr


def test_the_transformer_image_is_built_on_the_component_images_base_with_labels(
    tmp_path: Path,
) -> None:
    fake = _fake_docker(tmp_path)
    out = _build(fake, "--base", "python:3.11.9-slim-bookworm", "component", "transformer")
    assert out.returncode == 0, out.stderr
    builds = _calls(fake, "build")
    assert [t.split()[-1] for t in _calls(fake, "tag")] == [CPU_IMAGE, TRANSFORMER_IMAGE]
    assert "-f images/transformer/Dockerfile " in builds[1]
    bases = [re.search(r"BASE_IMAGE=(\S+)", b).group(1) for b in builds]
    assert bases == ["python:3.11.9-slim-bookworm"] * 2
    assert f"org.opencontainers.image.version={IMAGES_ENV['TRANSFORMER_TAG']}" in builds[1]
    assert (
        f"org.opencontainers.image.title={IMAGES_ENV['REGISTRY']}/{IMAGES_ENV['TRANSFORMER_IMAGE']}"
        in builds[1]
    )
    assert "org.opencontainers.image.revision=" in builds[1]


def test_by_default_what_can_be_built_is_built_and_a_skip_is_one_line(tmp_path: Path) -> None:
    """Without TensorRT's libraries (not on PyPI) the CUDA image cannot be built: `make images`
    builds the others and says in one line what it skipped and how to build it."""
    fake = _fake_docker(tmp_path)
    fake["env"]["WHEEL_CACHE"] = str(tmp_path / "cache")
    out = _build(fake)
    assert out.returncode == 0, out.stderr
    built = [t.split()[-1] for t in _calls(fake, "tag")]
    assert built == [CPU_IMAGE, TRANSFORMER_IMAGE]
    skips = [line for line in out.stderr.splitlines() if "skipping" in line]
    assert skips == [
        f"images: skipping cuda (TensorRT {IMAGES_ENV['TENSORRT_VERSION']}'s libraries are not on "
        "PyPI: make images IMAGES=cuda IMAGE_ARGS='--extra-index URL' or '--wheels DIR')"
    ]
    assert out.stderr.rstrip().endswith("; skipped cuda")


@pytest.mark.parametrize("how", ["extra-index", "wheels"])
def test_the_cuda_image_is_built_by_default_where_tensorrt_is_reachable(
    tmp_path: Path, how: str
) -> None:
    fake = _fake_docker(tmp_path)
    fake["env"]["WHEEL_CACHE"] = str(tmp_path / "cache")
    if how == "extra-index":
        args = ["--extra-index", "https://pypi.example/simple"]
    else:
        wheels = tmp_path / "wheels"
        wheels.mkdir()
        version = IMAGES_ENV["TENSORRT_VERSION"]
        (wheels / f"tensorrt_cu12_libs-{version}-py2.py3-none-manylinux_2_17_x86_64.whl").touch()
        args = ["--wheels", str(wheels)]
    out = _build(fake, *args)
    assert out.returncode == 0, out.stderr
    assert [t.split()[-1] for t in _calls(fake, "tag")] == [
        CPU_IMAGE,
        CUDA_IMAGE,
        TRANSFORMER_IMAGE,
    ]
    assert "skipping" not in out.stderr
