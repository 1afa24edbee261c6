"""Compile every pipeline to ``pipelines/<name>.yaml`` (committed, never edited by hand).

    python compile.py           # (re)write the YAML files
    python compile.py --check   # exit 1 naming each committed YAML that differs from its source

The YAML depends on the pipeline code, the components, ``params.yaml`` (parameter defaults and
compile-time settings) and ``images/images.env`` (the component image): change any of them and
``--check`` fails until ``python compile.py`` is run again.
"""

import argparse
import difflib
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from depth_common.atomic import atomic_path

ROOT = Path(__file__).resolve().parent
PIPELINES_DIR = ROOT / "pipelines"


def pipelines() -> dict[str, Callable[..., Any]]:
    """``{yaml stem: pipeline function}`` for every pipeline of the project."""
    from pipelines.depth_pipeline import depth_pipeline

    return {"depth_pipeline": depth_pipeline}


def compile_to(func: Callable[..., Any], path: Path) -> Path:
    """Compile ``func`` to ``path`` atomically (temp file in the same directory, then rename)."""
    from kfp import compiler

    # kfp picks the output format from the suffix: the temporary keeps the target's.
    with atomic_path(path, extension=path.suffix) as tmp:
        compiler.Compiler().compile(pipeline_func=func, package_path=str(tmp))
    return path


def check(out_dir: Path = PIPELINES_DIR) -> list[str]:
    """Compile into a temp dir and compare; return one message per stale or missing YAML."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for stem, func in pipelines().items():
            committed = out_dir / f"{stem}.yaml"
            fresh = compile_to(func, Path(tmp) / f"{stem}.yaml").read_text()
            if not committed.is_file():
                problems.append(f"{committed}: missing; run `python compile.py`")
                continue
            old = committed.read_text()
            if old != fresh:
                diff = difflib.unified_diff(
                    old.splitlines(), fresh.splitlines(), str(committed), "compiled now", n=1
                )
                shown = "\n".join(list(diff)[:40])
                problems.append(
                    f"{committed}: stale (differs from its source); run `python compile.py`\n"
                    f"{shown}"
                )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="fail if a committed YAML is stale (writes nothing)"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for p in problems:
            print(p, file=sys.stderr)
        if not problems:
            print(f"compiled pipelines are up to date: {', '.join(pipelines())}")
        return 1 if problems else 0
    for stem, func in pipelines().items():
        print(compile_to(func, PIPELINES_DIR / f"{stem}.yaml").relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
