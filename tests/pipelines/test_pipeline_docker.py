"""The whole pipeline in the component image (``make run RUNNER=docker``): every task in a
container as the image's non-root user, the MLflow store and the served repository on mounted
host directories, the deploy task's Triton inside the image. A second run keeps the champion;
a task failing in its container fails the run with its traceback on the console."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from containers import component_image, engine  # noqa: F401 - fixtures
from helpers import DEMO

from pipelines.run_local import run_local

pytestmark = [pytest.mark.container, pytest.mark.slow]
PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
SMALL = {"cities": 1, "per_split": 6}
OVERRIDES = [*DEMO, "training.epochs=2", "data.batch_size=4"]


@pytest.mark.timeout(2400)
def test_pipeline_runs_in_containers_and_keeps_its_champion(
    component_image: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    console = io.StringIO()
    first = run_local(
        PARAMS, OVERRIDES, synthetic=SMALL, root=tmp_path, runner="docker", console=console
    )
    assert first.ok, console.getvalue()
    assert first.decision is not None and first.decision[0], first.decision
    store = tmp_path / "containers"
    assert first.params.mlflow.tracking_uri == f"sqlite:///{store.resolve() / 'mlflow.db'}"
    served = store / "triton_repository" / first.params.export.triton_model_name
    assert (served / "1" / "model.onnx").is_file() and (served / "config.pbtxt").is_file()
    # Written inside the containers by the image's user, not by root.
    assert (first.run_dir / "train").stat().st_uid == 10001
    assert served.stat().st_uid == 10001
    names = [task for task, _, _ in first.stages]
    assert {"configure", "train", "evaluate", "decide", "deploy"} <= set(names)
    assert len(console.getvalue().splitlines()) < 40  # quiet: a page, not the executor JSON
    assert (first.log_dir / "train.log").stat().st_size > 0

    second = run_local(
        PARAMS,
        OVERRIDES,
        synthetic=SMALL,
        root=tmp_path,
        runner="docker",
        arguments={"min_improvement": 1000.0},  # its upper bound: a km better or no promotion
        console=io.StringIO(),
    )
    assert second.ok
    assert second.decision is not None and not second.decision[0]
    # The Else branch ran (tasks are keyed by base name: the component is also used in the If
    # branch, so kfp names this one record-no-promotion-2), and nothing of the If branch did.
    assert "record-no-promotion" in second.tasks
    assert not {"register", "export-onnx", "deploy"} & set(second.tasks)


@pytest.mark.timeout(900)
def test_a_task_failing_in_its_container_fails_the_run_with_its_traceback(
    component_image: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    console = io.StringIO()
    run = run_local(
        PARAMS,
        OVERRIDES,
        synthetic=SMALL,
        root=tmp_path,
        runner="docker",
        arguments={"encoder": "not_a_vit_at_all"},
        console=console,
    )
    assert not run.ok
    assert run.stages[0][:2] == ("configure", "FAILURE")
    text = console.getvalue()
    assert "Traceback (most recent call last)" in text and "not_a_vit_at_all" in text
    assert f"full log: {run.log_dir / 'configure.log'}" in text
    assert "train" not in [task for task, _, _ in run.stages]
