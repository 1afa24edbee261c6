"""Component bodies called directly (``component.python_func``): the adaptation they do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kfp import dsl

import components
from components.image import COMPONENT_IMAGE
from depth_common.config import load_params
from depth_common.config.container_images import component_image, read_images_env
from depth_common.errors import ConfigError
from pipelines.depth_pipeline import PARAM_KEYS, PARAMS_FILE

BASE = json.dumps(load_params(PARAMS_FILE).to_dict())


def _configure(values: dict, overrides=()) -> tuple[dict, dict]:
    out = components.configure.python_func(
        base_params=BASE, keys=PARAM_KEYS, values=values, overrides=list(overrides)
    )
    return json.loads(out.params_json), json.loads(out.data_params)


def test_configure_restores_types_from_kfp_text():
    # What kfp hands over for a struct of pipeline channels: text, numbers as doubles.
    params, data = _configure(
        {
            "encoder": "vit_tiny_patch16_224",
            "pretrained": "False",
            "img_size": "[32.0, 64.0]",
            "batch_size": "4.0",
            "epochs": "3.0",
            "encoder_lr": "1e-05",
            "decoder_lr": "0.0003",
            "mlflow_uri": "sqlite:////tmp/x.db",
            "mlflow_experiment": "123",  # a string param stays a string
            "min_improvement": "0.0",
        }
    )
    assert params["model"]["encoder"] == "vit_tiny_patch16_224"
    assert params["model"]["pretrained"] is False
    assert params["data"]["img_size"] == [32, 64]
    assert params["data"]["batch_size"] == 4 and isinstance(params["data"]["batch_size"], int)
    assert params["training"]["epochs"] == 3 and isinstance(params["training"]["epochs"], int)
    assert params["training"]["encoder_lr"] == pytest.approx(1e-5)
    assert params["mlflow"]["tracking_uri"] == "sqlite:////tmp/x.db"
    assert params["mlflow"]["experiment"] == "123"
    assert data == {"data": params["data"]}
    # Untouched keys keep params.yaml's values.
    assert params["training"]["si_lambda"] == load_params(PARAMS_FILE).training.si_lambda


def test_configure_typed_values_and_overrides_applied_last():
    params, _ = _configure(
        {"encoder": "vit_tiny_patch16_224", "epochs": 7, "img_size": [64, 128]},
        ["training.epochs=2", "data.num_workers=0"],
    )
    assert params["training"]["epochs"] == 2  # the override wins over the parameter
    assert params["data"]["img_size"] == [64, 128] and params["data"]["num_workers"] == 0


def test_configure_unknown_encoder_names_the_parameter():
    with pytest.raises(ConfigError, match=r"pipeline parameter 'encoder'.*'vit_nope'.*timm"):
        _configure({"encoder": "vit_nope"})


def test_configure_bad_value_names_the_parameter():
    with pytest.raises(ConfigError, match=r"pipeline parameter 'epochs' → training.epochs: got -1"):
        _configure({"epochs": "-1.0"})
    with pytest.raises(ConfigError, match=r"training.no_such_key"):
        _configure({}, ["training.no_such_key=1"])


def test_preprocess_missing_data_names_data_uri(tmp_path):
    missing = tmp_path / "no-such-cityscapes"
    raw = dsl.Dataset(name="raw", uri=str(missing))
    out = dsl.Dataset(name="processed", uri=str(tmp_path / "processed"))
    data_params = json.dumps({"data": load_params(PARAMS_FILE).to_dict()["data"]})
    with pytest.raises(FileNotFoundError, match=rf"pipeline parameter 'data_uri': '{missing}'"):
        components.preprocess.python_func(raw=raw, data_params=data_params, processed=out)
    assert not (tmp_path / "processed").exists()


def test_synthesize_and_preprocess_record_counts(tmp_path):
    raw = dsl.Dataset(name="raw", uri=str(tmp_path / "raw"))
    components.synthesize.python_func(
        options={"cities": 1.0, "per_split": 2.0, "size": [32.0, 64.0]}, raw=raw
    )
    assert raw.metadata["source"] == "synthetic"
    assert len(list((tmp_path / "raw" / "leftImg8bit" / "train").rglob("*.png"))) == 2
    processed = dsl.Dataset(name="processed", uri=str(tmp_path / "processed"))
    params = load_params(PARAMS_FILE, ["data.img_size=[32,64]", "data.num_workers=0"])
    components.preprocess.python_func(
        raw=raw, data_params=json.dumps({"data": params.to_dict()["data"]}), processed=processed
    )
    assert processed.metadata["counts"] == {"train": 2, "val": 2, "test": 2}
    assert processed.metadata["img_size"] == [32, 64]
    assert (tmp_path / "processed" / "manifest.json").is_file()


def test_record_no_promotion_writes_the_reason(tmp_path):
    note = dsl.Markdown(name="note", uri=str(tmp_path / "note.md"))
    components.record_no_promotion.python_func(run_id="abc", reason="worse by 1 m", note=note)
    text = (tmp_path / "note.md").read_text()
    assert "`abc`" in text and "worse by 1 m" in text
    assert note.metadata["reason"] == "worse by 1 m"


def test_every_component_uses_the_project_image():
    # export_tensorrt runs on the CUDA image (it builds the engine for the GPU it runs on).
    names = [n for n in components.__all__ if not n.isupper() and n != "export_tensorrt"]
    comps = [getattr(components, n) for n in names]
    assert len(comps) >= 10
    for comp in comps:
        assert comp.component_spec.implementation.container.image == COMPONENT_IMAGE, comp.name


def test_images_env_is_the_one_place(tmp_path):
    env = read_images_env()
    assert f"{env['REGISTRY']}/{env['COMPONENT_IMAGE']}:{env['COMPONENT_TAG']}" == COMPONENT_IMAGE
    bad = tmp_path / "images.env"
    bad.write_text("# only a registry\nREGISTRY=r.example\n")
    with pytest.raises(ValueError, match=r"images.env: missing COMPONENT_IMAGE, COMPONENT_TAG"):
        component_image(path=bad)
    bad.write_text("REGISTRY r.example\n")
    with pytest.raises(ValueError, match=r"images.env:1: expected KEY=VALUE"):
        read_images_env(bad)
    with pytest.raises(FileNotFoundError, match="cannot read"):
        read_images_env(Path(tmp_path / "absent.env"))


def test_train_submits_a_cluster_job_when_scaled_out(tmp_path, monkeypatch):
    """num_nodes x procs_per_node > 1: the step runs the job path, same Model artifact."""
    import depth_common.scaleout.launch as trainjob
    from depth_common.training.train import TrainResult

    calls = {}

    def fake_run_scaled_training(params, processed_dir, model_dir, *, run_name):
        calls.update(processed=processed_dir, run_name=run_name, nodes=params.training.num_nodes)
        Path(model_dir).mkdir(parents=True)
        (Path(model_dir) / "best.pt").write_bytes(b"checkpoint")
        return TrainResult(Path(model_dir) / "best.pt", {"val_rmse": 3.5}, "run-123", 2)

    monkeypatch.setattr(trainjob, "run_scaled_training", fake_run_scaled_training)
    monkeypatch.setenv("HOSTNAME", "depth-pipeline-abc-train-pod")
    params = load_params(PARAMS_FILE, ["training.num_nodes=2", "training.procs_per_node=4"])
    model, val = dsl.Model(uri=str(tmp_path / "model")), dsl.Metrics(uri=str(tmp_path / "val"))
    model.path, val.path = str(tmp_path / "model"), str(tmp_path / "val")
    run_id = components.train.python_func(
        processed=dsl.Dataset(uri=str(tmp_path / "data")),
        params_json=json.dumps(params.to_dict()),
        model=model,
        val=val,
    )
    assert run_id == "run-123"
    assert calls["nodes"] == 2 and calls["run_name"].startswith("depth-train-")
    assert Path(model.path).read_bytes() == b"checkpoint"
    assert model.metadata["mlflow_run_id"] == "run-123"
    assert model.metadata["best_val_rmse"] == 3.5


def test_export_tensorrt_writes_the_plan_and_its_metadata(tmp_path, monkeypatch):
    import depth_common.export.tensorrt as trt_mod

    calls = []

    def fake_export(onnx_path, plan_path, export_cfg):
        calls.append((Path(onnx_path), Path(plan_path), export_cfg.trt_fp16))
        Path(plan_path).write_bytes(b"engine")
        parity = {"b1": {"max_abs_m": 0.01}}
        return trt_mod.TrtExport(plan_path=Path(plan_path), parity=parity, fp16=True)

    monkeypatch.setattr(trt_mod, "export_tensorrt", fake_export)
    onnx = dsl.Model(name="onnx_model", uri=str(tmp_path / "onnx"), metadata={"file": "m.onnx"})
    plan = dsl.Model(name="plan", uri=str(tmp_path / "plan"))
    params = load_params(PARAMS_FILE, ["export.trt_opt_batch=2"])
    components.export_tensorrt.python_func(
        onnx_model=onnx, params_json=json.dumps(params.to_dict()), plan=plan
    )
    assert calls == [(tmp_path / "onnx" / "m.onnx", tmp_path / "plan" / "model.plan", True)]
    assert (tmp_path / "plan" / "model.plan").read_bytes() == b"engine"
    assert plan.metadata["file"] == "model.plan"
    assert plan.metadata["fp16"] is True
    assert plan.metadata["parity"] == {"b1": {"max_abs_m": 0.01}}
    assert plan.metadata["profile"] == [params.export.trt_min_batch, 2, params.export.trt_max_batch]


@pytest.mark.parametrize("with_plan", [False, True])
def test_triton_repository_passes_the_optional_plan(tmp_path, monkeypatch, with_plan):
    import depth_common.export.triton as triton_mod

    seen = {}

    def fake_build(onnx_path, out_dir, **kwargs):
        seen.update(kwargs, onnx=Path(onnx_path), out=Path(out_dir))
        return Path(out_dir)

    monkeypatch.setattr(triton_mod, "build_triton_repository", fake_build)
    onnx = dsl.Model(name="onnx_model", uri=str(tmp_path / "onnx"), metadata={"file": "model.onnx"})
    repo = dsl.Model(name="repository", uri=str(tmp_path / "repo"))
    extra = {}
    if with_plan:
        extra["plan"] = dsl.Model(
            name="plan", uri=str(tmp_path / "plan"), metadata={"file": "model.plan"}
        )
    params = load_params(PARAMS_FILE)
    components.triton_repository.python_func(
        onnx_model=onnx,
        params_json=json.dumps(params.to_dict()),
        version=3,
        repository=repo,
        **extra,
    )
    assert seen["onnx"] == tmp_path / "onnx" / "model.onnx"
    assert seen["out"] == tmp_path / "repo"
    assert seen["version"] == 3
    assert seen["plan_path"] == (tmp_path / "plan" / "model.plan" if with_plan else None)
    assert repo.metadata["tensorrt"] is with_plan
    assert repo.metadata["version"] == 3
