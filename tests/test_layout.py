"""The library's floor plan (docs/architecture.md): stages import only from stages below them."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "depth_common"

# Lowest first: a module may import from its own stage and from the stages before it.
STAGES = [
    "ground",  # errors, atomic, threads: the top-level modules
    "config",
    "data",
    "model",
    "registry",
    "evaluation",
    "training",
    "export",
    "serving",
    "monitoring",
    "deploy",
    "scaleout",
    "cli",
]
GROUND = {"errors", "atomic", "threads"}


def stage_of(module: str) -> str:
    """``depth_common.data.io`` → ``data``; a top-level module → ``ground``."""
    parts = module.split(".")
    if parts[1:] == ["__main__"]:  # ``python -m depth_common``: the command line's entry point
        return "cli"
    if len(parts) < 2 or parts[1] in GROUND:
        return "ground"
    return parts[1]


def library_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every ``depth_common`` module a file imports (line, dotted name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("depth_common"):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name) for a in node.names if a.name.startswith("depth_common")
            ]
    return found


def test_every_package_has_a_place_in_the_stage_order() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages <= set(STAGES), f"not in STAGES: {sorted(packages - set(STAGES))}"


def test_at_most_four_modules_stand_at_the_top() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert len(top) <= 4, sorted(top)


@pytest.mark.parametrize("path", library_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_from_a_stage_above_its_own(path: Path) -> None:
    own = STAGES.index(stage_of(module_name(path)))
    upward = [
        f"line {line}: {name}"
        for line, name in imported_modules(path)
        if STAGES.index(stage_of(name)) > own
    ]
    assert not upward, f"{path.relative_to(ROOT)} imports from above its stage: {upward}"


def imports_inside_functions(path: Path) -> list[tuple[int, str]]:
    """Every standard-library or ``depth_common`` import in a function body (line, module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found |= {(node.lineno, name) for name in names if is_local_or_stdlib(name)}
    return sorted(found)


def is_local_or_stdlib(module: str) -> bool:
    top = module.split(".")[0]
    return top == "depth_common" or top in sys.stdlib_module_names


def outside_the_cli(path: Path) -> bool:
    # The command line defers its commands' imports so ``--help`` stays light.
    return stage_of(module_name(path)) != "cli"


@pytest.mark.parametrize(
    "path",
    [p for p in library_modules() if outside_the_cli(p)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_standard_and_own_imports_stand_at_the_module_top(path: Path) -> None:
    inside = [f"line {line}: {name}" for line, name in imports_inside_functions(path)]
    assert not inside, f"{path.relative_to(ROOT)} imports inside a function: {inside}"
