"""The images, reviewed without an engine: each Dockerfile parsed and checked for a pinned base,
a numeric non-root USER, hash-locked dependencies installed before the code, no secrets; the
lock files against pyproject.toml; the build context. (``images/build.sh`` and
``images/engine.sh`` against a fake ``docker``: ``test_images_build_script.py``.)"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from helpers import CPU_IMAGE, IMAGES_ENV, ROOT

COMPONENT_DOCKERFILES = sorted((ROOT / "images" / "component").glob("Dockerfile*"))
TRANSFORMER_DOCKERFILE = ROOT / "images" / "transformer" / "Dockerfile"
DOCKERFILES = [*COMPONENT_DOCKERFILES, TRANSFORMER_DOCKERFILE]
SECRETISH = re.compile(
    r"TOKEN|SECRET|PASSW|API_?KEY|ACCESS_KEY|CREDENTIAL|AUTH|CERT|CA_?BUNDLE", re.I
)
TOKEN_LITERAL = re.compile(r"hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{20,}")
# TensorRT inside NVIDIA's Triton images (release notes): a plan only loads on the TensorRT that
# built it, so the CUDA image's TensorRT must follow the Triton tag.
TRITON_TENSORRT = {"24.08": "10.3", "24.09": "10.4", "24.10": "10.5", "24.12": "10.7"}


def _lock_module():
    spec = importlib.util.spec_from_file_location("images_lock", ROOT / "images" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock = _lock_module()


def parse(path: Path) -> list[tuple[str, str]]:
    """Dockerfile → [(INSTRUCTION, arguments)], comments dropped, continuations joined."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", path.read_text())
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
            args[key] = value.strip('"')
    return args


def _dockerfile_id(path: Path) -> str:
    return str(path.relative_to(ROOT / "images"))


def test_there_is_a_cpu_and_a_cuda_image() -> None:
    assert [p.name for p in COMPONENT_DOCKERFILES] == ["Dockerfile", "Dockerfile.cuda"]
    assert TRANSFORMER_DOCKERFILE.is_file()


@pytest.mark.parametrize("path", DOCKERFILES, ids=_dockerfile_id)
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


def test_cuda_image_is_the_component_image_plus_tensorrt() -> None:
    args = _args(parse(ROOT / "images" / "component" / "Dockerfile.cuda"))
    assert args["COMPONENT_BASE"] == CPU_IMAGE
    assert args["TENSORRT_VERSION"] == IMAGES_ENV["TENSORRT_VERSION"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=_dockerfile_id)
def test_runs_as_a_numeric_non_root_user(path: Path) -> None:
    instrs = parse(path)
    users = [(i, rest) for i, (word, rest) in enumerate(instrs) if word == "USER"]
    assert users, f"{path}: no USER (would run as root)"
    last_index, last = users[-1]
    uid = last.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{path}: USER {last} (numeric, non-zero expected)"
    later = [word for word, _ in instrs[last_index + 1 :]]
    assert "RUN" not in later and "USER" not in later  # nothing after it runs as someone else
    cpu = parse(ROOT / "images" / "component" / "Dockerfile")
    assert any(f"--uid {uid}" in rest for word, rest in cpu if word == "RUN")
    # The user is made in the image's own Dockerfile (the CUDA image inherits the CPU one's).
    made_here = [r for w, r in instrs[:last_index] if w == "RUN" and f"--uid {uid}" in r]
    assert made_here or path.name == "Dockerfile.cuda", f"{path}: no user {uid} is made"


def test_component_image_installs_the_lock_before_the_code() -> None:
    instrs = parse(ROOT / "images" / "component" / "Dockerfile")

    def index(pred) -> int:
        found = [i for i, ins in enumerate(instrs) if pred(*ins)]
        assert found, "expected instruction not found"
        return found[0]

    copy_lock = index(lambda w, r: w == "COPY" and "images/requirements.lock" in r)
    deps = index(lambda w, r: w == "RUN" and "-r images/requirements.lock" in r)
    copy_code = index(lambda w, r: w == "COPY" and r.startswith("depth_common"))
    install = index(lambda w, r: w == "RUN" and re.search(r"--no-deps --no-build-isolation \.", r))
    assert copy_lock < deps < copy_code < install
    assert "--require-hashes" in instrs[deps][1]
    copied = [r.split()[:-1] for w, r in instrs if w == "COPY"]
    for sources in copied:
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
    assert ("ENV", "DEPTH_MANIFESTS_DIR=/app/manifests") in instrs


def test_transformer_image_installs_its_lock_before_the_code() -> None:
    instrs = parse(TRANSFORMER_DOCKERFILE)
    copy_lock = _first(
        instrs, lambda w, r: w == "COPY" and "images/transformer/requirements.lock" in r
    )
    deps = _first(instrs, lambda w, r: w == "RUN" and "-r images/requirements.lock" in r)
    copy_code = _first(instrs, lambda w, r: w == "COPY" and r.startswith("depth_common"))
    assert copy_lock < deps < copy_code
    assert "images/component/pip-install.sh" in instrs[copy_lock][1]  # the same pip script
    assert instrs[deps][1].startswith("sh images/pip-install.sh --require-hashes --no-deps")
    assert "ENTRYPOINT" in [w for w, _ in instrs]
    # The import guard: the transformer imports without torch, tritonclient and ONNX Runtime.
    guard = [r for w, r in instrs if w == "RUN" and "sys.modules.update" in r]
    assert guard and all(m in guard[0] for m in ("'torch'", "'tritonclient'", "'onnxruntime'"))


def _first(instrs: list[tuple[str, str]], pred) -> int:
    found = [i for i, ins in enumerate(instrs) if pred(*ins)]
    assert found, "expected instruction not found"
    return found[0]


@pytest.mark.parametrize("path", DOCKERFILES, ids=_dockerfile_id)
def test_every_install_is_the_pip_script_and_every_copy_exists(path: Path) -> None:
    instrs = parse(path)
    args = _args(instrs)
    assert "BASE_IMAGE" in args or "COMPONENT_BASE" in args  # images/build.sh picks the base
    for word, rest in instrs:
        if word == "RUN":  # no pip of its own: offline, retries and the CA come from the script
            assert not re.search(r"\bpip3? install\b", rest), f"{path}: RUN {rest[:60]}"
            if "-r images/" in rest:
                assert "--require-hashes" in rest, f"{path}: a lock installed without hashes"
        if word == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                assert (ROOT / src).exists(), f"{path}: COPY {src}: no such file"


@pytest.mark.parametrize("path", DOCKERFILES, ids=_dockerfile_id)
def test_no_secrets_baked_in(path: Path) -> None:
    for word, rest in parse(path):
        if word in ("ENV", "ARG", "LABEL"):
            for key in re.findall(r"(\w+)=", rest) or [rest.split()[0]]:
                assert not SECRETISH.search(key), f"{path}: {word} {key} looks like a secret"
        assert not TOKEN_LITERAL.search(rest), f"{path}: a literal token in {word}"
        if word == "COPY":
            assert not re.search(
                r"(^|[\s/])\.env\b|token|secret|\.kube|\.netrc|\.pem|\.crt", rest, re.I
            )


def test_tensorrt_matches_the_serving_triton() -> None:
    release = IMAGES_ENV["TRITON_TAG"].split("-")[0]
    assert release in TRITON_TENSORRT, f"add Triton {release}'s TensorRT version to this table"
    assert IMAGES_ENV["TENSORRT_VERSION"].startswith(TRITON_TENSORRT[release] + ".")
    pins = lock.parse_lock(lock.CUDA_LOCK)
    assert pins["tensorrt-cu12-bindings"][0] == IMAGES_ENV["TENSORRT_VERSION"]


def test_the_locks_satisfy_pyproject_and_pin_every_file() -> None:
    assert lock.check_locks() == []
    pins = lock.parse_lock(lock.LOCK)
    for name in ("torch", "kfp", "onnxruntime", "nvidia-pytriton", "setuptools"):
        assert name in pins, name
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for _, hashes in pins.values() for h in hashes)


def test_the_transformer_lock_holds_the_extra_and_no_torch() -> None:
    pins = lock.parse_lock(lock.TRANSFORMER_LOCK)
    for name in ("kserve", "pillow", "numpy", "grpcio", "protobuf"):
        assert name in pins, name
    assert not set(lock.NOT_IN_TRANSFORMER) & set(pins)
    base = lock.parse_lock(lock.LOCK)
    assert all(base[n][0] == v for n, (v, _) in pins.items() if n in base)
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for _, hashes in pins.values() for h in hashes)
    # images/build.sh installs (and prefetches) every lock of images/transformer/.
    assert "images/transformer/*.lock" in (ROOT / "images" / "build.sh").read_text()


def test_the_transformer_lock_check_names_what_disagrees(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    text = (ROOT / "pyproject.toml").read_text()
    extra = 'transformer = ["kserve>=0.15,<0.22",'
    assert extra in text
    pyproject.write_text(text.replace(extra, 'transformer = ["kserve>=0.22", "aiofiles>=1",', 1))
    kserve = lock.parse_lock(lock.TRANSFORMER_LOCK)["kserve"][0]
    numpy = lock.parse_lock(lock.LOCK)["numpy"][0]
    bad = tmp_path / "requirements.lock"
    bad.write_text(
        "".join(
            ln + "\n"
            for ln in lock.TRANSFORMER_LOCK.read_text().splitlines()
            if not ln.startswith("numpy==")
        )
        + f"numpy=={numpy}.1 --hash=sha256:{'0' * 64}\n"
        + f"torch==2.14.1 --hash=sha256:{'1' * 64}\n"
    )
    problems = lock.check_locks(pyproject=pyproject, transformer_lock=bad)
    assert problems == [
        f"kserve>=0.22: {bad} pins {kserve}",
        f"aiofiles>=1: not in {bad}",
        f"{bad} holds torch: the transformer image must not install it",
        f"{bad} pins numpy=={numpy}.1, requirements.lock {numpy}",
    ]


def test_the_lock_check_names_what_disagrees(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    text = (ROOT / "pyproject.toml").read_text()
    pyproject.write_text(
        text.replace('"torch==2.14.1"', '"torch==2.15.0"', 1).replace(
            '"pillow>=10",', '"pillow>=10",\n    "not-locked-anywhere>=1",', 1
        )
    )
    bad_lock = tmp_path / "requirements.lock"
    bad_lock.write_text("torch==2.14.1\n")
    with pytest.raises(ValueError, match=r"requirements.lock:1: expected 'name==version --hash"):
        lock.parse_lock(bad_lock)
    problems = lock.check_locks(pyproject=pyproject)
    assert "torch==2.15.0: the lock pins 2.14.1" in problems
    assert "not-locked-anywhere>=1: not in the lock" in problems
    assert len(problems) == 2


def test_build_context_is_the_sources_only() -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "**"  # exclude everything, then allow the sources
    allowed = {ln[1:].removesuffix("/**") for ln in lines if ln.startswith("!")}
    trees = {ln[1:].removesuffix("/**") for ln in lines if ln.startswith("!") and "/**" in ln}
    for path in DOCKERFILES:
        for word, rest in parse(path):
            if word == "COPY" and not rest.startswith("--from"):
                for src in rest.split()[:-1]:
                    src = src.rstrip("/")
                    inside = any(src.startswith(f"{tree}/") for tree in trees)
                    assert src in allowed or inside, f".dockerignore keeps out COPY {src}"
    for private in (".venv", ".git", "data", "saved_models", "mlflow.db", "runs"):
        assert private not in allowed
