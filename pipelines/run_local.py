"""Run the depth pipeline on this machine with ``kfp.local`` (no cluster), then summarise it.

    python -m pipelines.run_local --params params.yaml --set training.epochs=2 [--demo]

The same pipeline function that ``compile.py`` compiles runs through ``kfp.local``:

* ``--runner subprocess`` (default): ``SubprocessRunner(use_venv=False)``, every task a
  subprocess of this Python; MLflow uses ``sqlite:///mlflow.db`` (made absolute, so every task
  sees the same store).
* ``--runner docker``: ``DockerRunner``, every task in the built component image as its
  non-root user (``pipelines.docker_run``). A relative ``sqlite:///`` store and
  ``export.repository_dir`` then live under ``<root>/containers/``, a directory mounted into
  the tasks and writable by the image's user.

Artifacts land under ``<root>/<timestamp>/``, each task's full output in its ``logs/``; the
console gets one line per finished task (the log tail of a failed one). ``--demo`` lays
``params.demo.yaml`` (small encoder, small images, few epochs) over the params before ``--set``.
At the end it prints each stage's status and time, the test metrics, the promotion decision
and the champion version; the exit status is 1 when a task failed.
"""

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from depth_common.cli.parser import add_params_arguments
from depth_common.cli.startup import ENV as STARTUP_ENV
from depth_common.cli.startup import format_startup, read_startup_log
from depth_common.config import Params, load_params, params_from_dict
from depth_common.config.params import overlay_overrides
from depth_common.errors import ConfigError, ContainerError
from pipelines.task_logs import TaskLogRouter

RUNNERS = ("subprocess", "docker")
#: The demo's overlay of params.yaml (what ``--demo`` applies) and its synthetic data: 2 cities
#: x 24 images per split (48 train / 48 val / 48 test at 128x256), enough that 12 epochs show
#: real learning (test AbsRel about 0.24 on the full-resolution protocol) in about a minute.
DEMO_FILE = Path(__file__).resolve().parents[1] / "params.demo.yaml"
DEMO_SYNTHETIC: dict[str, int] = {"cities": 2, "per_split": 24}
#: Under ``root``: the MLflow store and served repository of containerized runs.
CONTAINER_STORE = "containers"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")


@dataclass
class StageEvents:
    """Per-task start time, end time and status, read from kfp.local's own log records."""

    started: dict[str, float] = field(default_factory=dict)
    finished: dict[str, tuple[float, str]] = field(default_factory=dict)

    def filter(self, record: logging.LogRecord) -> bool:
        # A logger-level filter: kfp.local swaps the root logger's handlers, not its filters.
        text = _ANSI.sub("", record.getMessage())
        if m := _START.search(text):
            self.started.setdefault(m.group(1), record.created)
        elif m := _END.search(text):
            self.finished[m.group(1)] = (record.created, m.group(2))
        return True

    def stages(self) -> list[tuple[str, str, float]]:
        """``[(task, status, seconds)]`` in start order; a task with no end is RUNNING/FAILED."""
        rows = []
        for task, t0 in sorted(self.started.items(), key=lambda kv: kv[1]):
            t1, status = self.finished.get(task, (t0, "FAILURE"))
            rows.append((task, status, t1 - t0))
        return rows


def _base_name(task: str) -> str:
    # Tasks of the sub-pipeline called in the Else branch get "-2" suffixes.
    # A component used in several branches adds one more (record-no-promotion-2-2).
    return re.sub(r"(-\d+)+$", "", task)


def read_task_outputs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """``{task: executor_output.json}`` of every task kfp.local ran under ``run_dir``."""
    outputs = {}
    for f in sorted(run_dir.glob("*/executor_output.json")):
        outputs[_base_name(f.parent.name)] = json.loads(f.read_text())
    return outputs


def artifact_metadata(output: dict[str, Any], name: str) -> dict[str, Any]:
    """Metadata of output artifact ``name`` in one executor_output.json (empty if absent)."""
    arts = output.get("artifacts", {}).get(name, {}).get("artifacts", [])
    return dict(arts[0].get("metadata", {})) if arts else {}


def resolve_tracking_uri(uri: str, cwd: Path) -> str:
    """A relative ``sqlite:///file.db`` becomes absolute (tasks may run elsewhere)."""
    from depth_common.registry.tracking import sqlite_path

    db = sqlite_path(uri)
    if db is None or db.is_absolute():
        return uri
    return f"sqlite:///{(cwd / db).resolve()}"


def relocate_relative(params: Params, overrides: list[str], base: Path) -> Params:
    """Containerized runs: a relative sqlite store and ``export.repository_dir`` move under
    ``base`` (the directory mounted into the tasks); ``overrides`` gets the new values."""
    from depth_common.registry.tracking import sqlite_path

    changes = []
    db = sqlite_path(params.mlflow.tracking_uri)
    if db is not None and not db.is_absolute():
        changes.append(f"mlflow.tracking_uri=sqlite:///{(base / db.name).resolve()}")
    if not Path(params.export.repository_dir).is_absolute():
        changes.append(f"export.repository_dir={(base / 'triton_repository').resolve()}")
    overrides.extend(changes)
    return params.with_overrides(changes) if changes else params


@dataclass
class LocalRun:
    """What one local pipeline run produced (for the summary and for tests)."""

    run_dir: Path
    ok: bool
    stages: list[tuple[str, str, float]]
    tasks: dict[str, dict[str, Any]]
    params: Params
    wall_s: float
    log_dir: Path | None = None

    @property
    def test_metrics(self) -> dict[str, float]:
        return artifact_metadata(self.tasks.get("evaluate", {}), "test")

    @property
    def decision(self) -> tuple[bool, str] | None:
        values = self.tasks.get("decide", {}).get("parameterValues")
        return None if not values else (bool(values["promote"]), str(values["reason"]))

    @property
    def run_id(self) -> str | None:
        return self.tasks.get("train", {}).get("parameterValues", {}).get("Output")


def run_local(
    params_path: str | Path | Sequence[str | Path] = "params.yaml",
    overrides: Sequence[str] = (),
    *,
    data_uri: str = "synthetic",
    synthetic: dict[str, Any] | None = None,
    arguments: dict[str, Any] | None = None,
    root: str | Path = "runs",
    runner: str = "subprocess",
    quiet: bool = True,
    console: Any = None,
) -> LocalRun:
    """Run the pipeline built from ``params_path`` (one file, or files laid over each other) with ``overrides`` as ``params_overrides``.

    ``arguments`` sets other pipeline parameters (e.g. ``{"epochs": 3}``); it wins over an
    override of the same key. The params file and
    overrides are validated here first, so a bad ``--set`` fails before any task starts; a bad
    pipeline argument fails in the pipeline's ``configure`` task, as it would on a cluster.
    ``runner``: "subprocess" or "docker" (see the module doc). ``quiet``: task output goes to
    ``<pipeline root>/logs/<task>.log`` and ``console`` (default stdout) gets one line per task.
    """
    from pipelines.depth_pipeline import PARAM_KEYS, make_pipeline

    if runner not in RUNNERS:
        raise ValueError(f"runner {runner!r}: expected one of {', '.join(RUNNERS)}")
    console = console or sys.stdout

    base = load_params(params_path)
    # An explicit pipeline argument wins over an override of the same key (e.g. DEMO's
    # model.encoder), because overrides are applied after the parameters in `configure`.
    taken = {PARAM_KEYS[name] for name in (arguments or {}) if name in PARAM_KEYS}
    overrides = [o for o in overrides if o.partition("=")[0].strip() not in taken]
    params = base.with_overrides(overrides)
    if runner == "docker":
        params = relocate_relative(params, overrides, Path(root) / CONTAINER_STORE)
    uri = resolve_tracking_uri(params.mlflow.tracking_uri, Path.cwd())
    if uri != params.mlflow.tracking_uri:
        overrides.append(f"mlflow.tracking_uri={uri}")
        params = params.with_overrides([f"mlflow.tracking_uri={uri}"])

    from depth_common.registry.store import ensure_sqlite_store

    ensure_sqlite_store(params.mlflow.tracking_uri)  # once, whole, before any task opens it

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    pipeline_root = (Path(root) / stamp).resolve()
    log_dir = pipeline_root / "logs" if quiet else None
    # Each task appends its start-up time (process start -> imports done) here.
    os.environ[STARTUP_ENV] = str(pipeline_root / "startup.jsonl")
    events = StageEvents()
    root_logger = logging.getLogger()
    root_logger.addFilter(events.filter)
    t0 = time.monotonic()
    try:
        with _runner(runner, pipeline_root, params, console), _task_output(log_dir, console):
            make_pipeline(base)(
                **dict(arguments or {}),
                data_uri=data_uri,
                synthetic=dict(synthetic or {}),
                params_overrides=overrides,
            )
    finally:
        root_logger.removeFilter(events.filter)
    wall = time.monotonic() - t0
    run_dirs = sorted(p for p in pipeline_root.iterdir() if p.is_dir() and p != log_dir)
    run_dir = run_dirs[-1] if run_dirs else pipeline_root
    stages = events.stages()
    ok = bool(stages) and all(status == "SUCCESS" for _, status, _ in stages)
    tasks = read_task_outputs(run_dir)
    resolved = tasks.get("configure", {}).get("parameterValues", {}).get("params_json")
    if resolved:  # what the tasks really used (pipeline arguments included)
        params = params_from_dict(json.loads(resolved))
    return LocalRun(run_dir, ok, stages, tasks, params, wall, log_dir)


@contextlib.contextmanager
def _runner(kind: str, pipeline_root: Path, params: Params, console: Any) -> Iterator:
    """``kfp.local.init`` with the runner ``kind`` (for docker: image, user, mounts checked)."""
    from kfp import local

    if kind == "subprocess":
        pipeline_root.mkdir(parents=True, exist_ok=False)
        local.init(
            runner=local.SubprocessRunner(use_venv=False),
            pipeline_root=str(pipeline_root),
            raise_on_error=False,
        )
        yield
        return
    from components.image import COMPONENT_IMAGE
    from pipelines import docker_run

    client = docker_run.docker_client()
    try:
        image = docker_run.inspect_image(client, COMPONENT_IMAGE)
    finally:
        client.close()
    pipeline_root.mkdir(parents=True, exist_ok=False)  # only once the engine and image are there
    here = docker_run.source_revision(Path(__file__).resolve().parents[1])
    if image.revision and here and image.revision != here:
        print(
            f"note: {image.ref} was built from {image.revision}, the tree is at {here}: "
            "`make images` rebuilds it",
            file=console,
        )
    # The MLflow store's directory and the served repository's parent: mounted at their own
    # paths (the pipeline root is mounted by kfp.local itself).
    shared = docker_run.shared_dirs(params.mlflow.tracking_uri, params.export.repository_dir)
    user = docker_run.hand_over([pipeline_root, *shared], image.user)
    options = docker_run.runner_options(user, image, shared)
    # The tasks' start-up rows go to the (mounted) pipeline root from inside the containers too.
    options["environment"][STARTUP_ENV] = os.environ[STARTUP_ENV]
    local.init(
        runner=local.DockerRunner(**options),
        pipeline_root=str(pipeline_root),
        raise_on_error=False,
    )
    with docker_run.safe_docker_tasks(), docker_run.engine_errors():
        yield


@contextlib.contextmanager
def _task_output(log_dir: Path | None, console: Any) -> Iterator:
    """Quiet: kfp.local's stdout and Python warnings filed per task under ``log_dir``
    (None: everything streams to the terminal as it comes)."""
    if log_dir is None:
        yield
        return
    print(f"task logs: {log_dir}", file=console)
    router = TaskLogRouter(log_dir, console)

    def file_warning(message, category, filename, lineno, file=None, line=None) -> None:
        router.write(warnings.formatwarning(message, category, filename, lineno, line))

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(router):
            warnings.showwarning = file_warning
            yield
    finally:
        router.close()


def format_summary(run: LocalRun) -> str:
    """The text ``make run`` prints at the end."""
    from depth_common.registry.promotion import champion_version

    lines = [f"pipeline run: {run.run_dir}", "", f"{'stage':<24} {'status':<8} {'time':>8}"]
    for task, status, seconds in run.stages:
        lines.append(f"{task:<24} {status:<8} {seconds:>7.1f}s")
    lines.append(f"{'total':<33} {run.wall_s:>7.1f}s")
    lines += format_startup(read_startup_log(run.run_dir.parent / "startup.jsonl"))
    metrics = run.test_metrics
    if metrics:
        lines += ["", "test metrics:"]
        lines += [f"  {k:<16} {v:.4f}" for k, v in sorted(metrics.items())]
    if run.run_id:
        lines.append(f"MLflow run: {run.run_id} ({run.params.mlflow.tracking_uri})")
    if run.decision is not None:
        promote, reason = run.decision
        lines += ["", f"decision: {'PROMOTE' if promote else 'KEEP CHAMPION'} - {reason}"]
    try:
        version = champion_version(run.params)
    except Exception as exc:  # the summary must not hide the run's own outcome
        version = f"unknown ({exc})"
    lines.append(f"champion: {run.params.mlflow.model_name} version {version}")
    from depth_common.deploy.rollout import summary_of_deploy

    lines += summary_of_deploy(run.tasks.get("deploy", {}), run.params)
    where = f"the task logs in {run.log_dir}" if run.log_dir else "the task logs above"
    lines.append("status: " + ("SUCCEEDED" if run.ok else f"FAILED (see {where})"))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.run_local", description=__doc__.splitlines()[0]
    )
    add_params_arguments(parser)
    parser.add_argument(
        "--demo",
        action="store_true",
        help="lay params.demo.yaml over the params first (and use its synthetic data size "
        "unless --synthetic)",
    )
    parser.add_argument(
        "--data-uri", default="synthetic", help='"synthetic" (default) or a Cityscapes root'
    )
    parser.add_argument(
        "--synthetic",
        default=None,
        help='JSON options of generate_cityscapes, e.g. \'{"cities": 2, "per_split": 8}\'',
    )
    parser.add_argument(
        "--arg", action="append", default=[], metavar="NAME=VALUE", help="a pipeline parameter"
    )
    parser.add_argument("--root", default="runs", help="parent of the pipeline roots")
    parser.add_argument(
        "--runner",
        choices=RUNNERS,
        default="subprocess",
        help="subprocess: tasks in this environment; docker: in the built component image",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="stream every task's output (not only to its log)"
    )
    args = parser.parse_args(argv)
    overrides = [*(overlay_overrides(DEMO_FILE) if args.demo else ()), *args.set]
    try:
        if args.synthetic is None:
            synthetic = dict(DEMO_SYNTHETIC) if args.demo else {}
        else:
            synthetic = json.loads(args.synthetic)
        if not isinstance(synthetic, dict):
            raise ValueError(f"--synthetic {args.synthetic!r}: expected a JSON object")
        arguments = {}
        for text in args.arg:
            name, sep, value = text.partition("=")
            if not sep:
                raise ValueError(f"--arg {text!r}: expected NAME=VALUE")
            arguments[name.strip()] = yaml.safe_load(value) if value.strip() else ""
        run = run_local(
            args.params,
            overrides,
            data_uri=args.data_uri,
            synthetic=synthetic,
            arguments=arguments,
            root=args.root,
            runner=args.runner,
            quiet=not args.verbose,
        )
    except (ConfigError, ValueError, TypeError, ContainerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n" + "=" * 80 + "\n" + format_summary(run))
    return 0 if run.ok else 1


if __name__ == "__main__":
    sys.exit(main())
