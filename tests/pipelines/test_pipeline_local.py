"""The pipeline end to end on kfp.local: promote, then keep the champion; bad parameters.

Tiny configuration (vit_tiny from random weights, 32x64 images, 8 images per split) so two
full runs fit the test budget. MLflow and the pipeline roots live in ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import DEMO, TINY_SYNTHETIC, tiny_pipeline_overrides

import components
from pipelines.depth_pipeline import PARAMS_FILE
from pipelines.run_local import LocalRun, artifact_metadata, format_summary, run_local

pytestmark = pytest.mark.slow

TYPED = {"system.Dataset", "system.Model", "system.Metrics", "system.HTML", "system.Markdown"}


def _component(task: str):
    return getattr(components, task.replace("-", "_"))


def _check_typed_outputs(run: LocalRun) -> dict[str, dict[str, dict]]:
    """Every output artifact of every task: declared with a typed class, present on disk."""
    seen = {}
    for task, out in run.tasks.items():
        if not hasattr(components, task.replace("-", "_")):
            continue  # the importer: its Dataset type is checked in test_pipeline_compile
        spec_outputs = _component(task).component_spec.outputs or {}
        for name, entry in out.get("artifacts", {}).items():
            declared = spec_outputs[name].type.split("@")[0]
            assert declared in TYPED, (task, name, declared)
            art = entry["artifacts"][0]
            if declared != "system.Metrics":  # metrics live in metadata only
                assert Path(art["uri"]).exists(), (task, name)
            seen.setdefault(task, {})[name] = art["metadata"]
    return seen


def test_promote_then_keep_champion(tmp_path):
    from mlflow import MlflowClient

    first = run_local(
        PARAMS_FILE,
        tiny_pipeline_overrides(tmp_path, "training.epochs=3"),
        data_uri="synthetic",
        synthetic=TINY_SYNTHETIC,
        root=tmp_path / "runs",
    )
    assert first.ok, first.stages
    assert first.decision is not None and first.decision[0], first.decision
    meta = _check_typed_outputs(first)
    assert {"synthesize", "preprocess", "train", "evaluate", "decide"} <= set(meta)
    assert {"register", "export-onnx", "triton-repository"} <= set(first.tasks)
    assert "record-no-promotion" not in first.tasks
    assert meta["preprocess"]["processed"]["counts"] == {"train": 8, "val": 8, "test": 8}
    model = meta["train"]["model"]
    assert model["encoder"] == "vit_tiny_patch16_224" and model["img_size"] == [32, 64]
    assert model["mlflow_run_id"] == first.run_id and model["best_val_rmse"] > 0
    assert meta["train"]["val"]["val_rmse"] == pytest.approx(model["best_val_rmse"])
    assert set(first.test_metrics) >= {"test_rmse", "test_abs_rel", "test_delta_1"}
    report = Path(first.tasks["evaluate"]["artifacts"]["report"]["artifacts"][0]["uri"])
    assert "<html" in report.read_text().lower()
    assert meta["decide"]["decision"]["promote"] is True
    registered = first.tasks["register"]["parameterValues"]
    assert (registered["promoted"], registered["version"]) == (True, 1)
    onnx = meta["export-onnx"]["onnx_model"]
    assert onnx["img_size"] == [32, 64] and max(onnx["parity_max_abs_diff_m"].values()) < 1e-3
    repo = Path(first.tasks["triton-repository"]["artifacts"]["repository"]["artifacts"][0]["uri"])
    assert (repo / "depth" / "config.pbtxt").is_file() and (repo / "depth" / "1").is_dir()
    served = meta["deploy"]["report"]
    assert served["target"] == "local" and served["model_version"] == "1"
    # Nothing served before: a smoke-tested replace, then the registry follows serving.
    assert (served["outcome"], served["aliases"]) == ("replaced", "champion v1")
    assert (tmp_path / "serving" / "depth" / "1" / "model.onnx").is_file()  # installed
    assert "push-hf" not in first.tasks  # export.hf_repo_id "" skips the Hub push

    # Second run: same data through the importer branch, the untrained model (no fine-tuning
    # of the champion, no epochs) → worse.
    raw = first.tasks["synthesize"]["artifacts"]["raw"]["artifacts"][0]["uri"]
    second = run_local(
        PARAMS_FILE,
        tiny_pipeline_overrides(tmp_path, "training.epochs=0", "training.init_from=''"),
        data_uri=raw,
        root=tmp_path / "runs",
    )
    assert second.ok, second.stages
    assert [s for s, *_ in second.stages][:2] == ["configure", "importer"]
    promote, reason = second.decision
    assert not promote and "keeping version 1" in reason
    meta2 = _check_typed_outputs(second)
    assert not {"register", "export-onnx", "deploy"} & set(second.tasks)
    assert meta2["record-no-promotion"]["note"]["reason"] == reason  # the Else branch ran
    assert second.test_metrics["test_rmse"] > first.test_metrics["test_rmse"]

    client = MlflowClient(first.params.mlflow.tracking_uri)
    for run in (first, second):
        logged = client.get_run(run.run_id).data.metrics
        assert logged["test_rmse"] == pytest.approx(run.test_metrics["test_rmse"])
    champion = client.get_model_version_by_alias("ViT+Decoder", "champion")
    assert (int(champion.version), champion.run_id) == (1, first.run_id)
    assert len(client.search_model_versions("name='ViT+Decoder'")) == 1

    summary = format_summary(second)
    assert "decision: KEEP CHAMPION" in summary and "champion: ViT+Decoder version 1" in summary
    assert "record-no-promotion" in summary and "test_rmse" in summary


def test_bad_parameters_fail_in_the_first_task_that_can_know(tmp_path, capfd):
    bad_encoder = run_local(
        PARAMS_FILE,
        tiny_pipeline_overrides(tmp_path),
        arguments={"encoder": "vit_no_such_model"},
        root=tmp_path / "runs",
    )
    assert not bad_encoder.ok
    # The argument wins over the DEMO preset's model.encoder override.
    assert [(t, s) for t, s, _ in bad_encoder.stages] == [("configure", "FAILURE")]
    out = capfd.readouterr().out
    assert "pipeline parameter 'encoder' → model.encoder: 'vit_no_such_model'" in out

    missing = tmp_path / "no-cityscapes-here"
    no_data = run_local(
        PARAMS_FILE,
        tiny_pipeline_overrides(tmp_path),
        data_uri=str(missing),
        root=tmp_path / "runs",
    )
    assert not no_data.ok
    statuses = {t: s for t, s, _ in no_data.stages}
    assert statuses["configure"] == "SUCCESS" and statuses["preprocess-2"] == "FAILURE"
    assert "train-2" not in statuses
    out = capfd.readouterr().out
    assert f"pipeline parameter 'data_uri': '{missing}' is not a readable directory" in out
    assert artifact_metadata({}, "x") == {}


@pytest.mark.parametrize(
    ("argv", "synthetic"),
    [
        (["--demo"], "DEMO_SYNTHETIC"),
        (["--demo", "--synthetic", '{"per_split": 2}'], {"per_split": 2}),
        ([], {}),
    ],
)
def test_demo_flag_brings_its_data_size_unless_given(monkeypatch, argv, synthetic):
    """`make run` (--demo) generates enough data to show learning; --synthetic still wins."""
    from pipelines import run_local as module
    from pipelines.run_local import DEMO_SYNTHETIC

    seen = {}

    def fake_run_local(params_path, overrides, **kwargs):
        seen.update(kwargs, overrides=list(overrides))
        raise ValueError("stop here")  # main() reports it and returns non-zero

    monkeypatch.setattr(module, "run_local", fake_run_local)
    assert module.main(argv) != 0
    expected = dict(DEMO_SYNTHETIC) if synthetic == "DEMO_SYNTHETIC" else synthetic
    assert seen["synthetic"] == expected
    assert (seen["overrides"][: len(DEMO)] == list(DEMO)) == ("--demo" in argv)
