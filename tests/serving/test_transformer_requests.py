"""Runs ``transformer_requests_cases.py`` (the transformer's request handling, fuzz included)
in a pytest process of its own: those cases import kserve, which cannot share a process with
the tritonclient the rest of the suite imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).with_name("transformer_requests_cases.py")


def test_the_transformer_request_cases_pass_in_their_own_process() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "skipped" not in out.stdout, out.stdout[-2000:]
