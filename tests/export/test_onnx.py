"""ONNX export of a real vit_tiny DPT: checker, interface, metadata, dynamic batch, parity gate."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from depth_common.config import Params, params_from_dict
from depth_common.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from depth_common.errors import ParityError
from depth_common.export import onnx as onnx_export
from depth_common.export.onnx import (
    OnnxExport,
    export_model,
    export_onnx,
    log_onnx_to_mlflow,
    read_metadata,
)
from depth_common.model.checkpoint import model_from_checkpoint, save_checkpoint
from depth_common.model.dpt import build_model

H, W = 64, 128
RUN_ID = "0123456789abcdef"


@pytest.fixture(scope="module")
def params() -> Params:
    return params_from_dict(
        {},
        [
            "model.encoder=vit_tiny_patch16_224",
            "model.pretrained=false",
            "model.decoder_features=32",
            f"data.img_size=[{H},{W}]",
            "data.max_depth=60.0",
        ],
    )


@pytest.fixture(scope="module")
def checkpoint(params: Params, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model(params)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    return save_checkpoint(
        path, model, params, epoch=3, metrics={"val_rmse": 4.2}, mlflow_run_id=RUN_ID
    )


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> OnnxExport:
    return export_onnx(checkpoint, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def torch_model(checkpoint: Path) -> torch.nn.Module:
    return model_from_checkpoint(checkpoint)[0]


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") else d.dim_param
        for d in value_info.type.tensor_type.shape.dim
    ]


def test_checker_and_interface(exported: OnnxExport) -> None:
    onnx.checker.check_model(str(exported.path), full_check=True)
    model = onnx.load(str(exported.path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == exported.input_name == "image"
    assert out.name == exported.output_name == "depth"
    assert (
        inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    )
    assert _dims(inp) == ["batch", 3, H, W]
    assert _dims(out) == ["batch", 1, H, W]
    assert exported.img_size == (H, W)
    # no temporary file is left next to the model
    assert sorted(p.name for p in exported.path.parent.iterdir()) == ["model.onnx"]


def test_metadata(exported: OnnxExport, checkpoint: Path, params: Params) -> None:
    meta = read_metadata(exported.path)
    assert meta == exported.metadata
    assert meta["encoder"] == "vit_tiny_patch16_224"
    assert json.loads(meta["img_size"]) == [H, W]
    np.testing.assert_allclose(json.loads(meta["normalization_mean"]), IMAGENET_MEAN, atol=1e-6)
    np.testing.assert_allclose(json.loads(meta["normalization_std"]), IMAGENET_STD, atol=1e-6)
    assert float(meta["max_depth"]) == params.data.max_depth == 60.0
    assert meta["mlflow_run_id"] == RUN_ID
    assert meta["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert meta["canonical_focal_px"] == ""  # saved without one: camera-blind


def test_metadata_carries_the_canonical_focal() -> None:
    from depth_common.export.onnx import build_metadata

    common = dict(encoder="e", img_size=(H, W), max_depth=80.0, run_id=None, checkpoint_sha256=None)
    assert build_metadata(**common, canonical_focal_px=70.5)["canonical_focal_px"] == "70.5"
    assert build_metadata(**common)["canonical_focal_px"] == ""


def test_parity_figures_recorded(exported: OnnxExport) -> None:
    assert set(exported.parity) == {"batch_1", "batch_4"}
    for diff in exported.parity.values():
        assert 0.0 <= diff < 1e-3


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_dynamic_batch_matches_pytorch(
    exported: OnnxExport, torch_model: torch.nn.Module, batch: int
) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, 3, H, W), dtype=np.float32)
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["depth"], {"image": x})
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(x)).numpy()
    assert got.shape == (batch, 1, H, W)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3)
    # the images differ, so a batch-size-specific constant would show up as equal rows
    assert not np.allclose(got[0], got[-1]) or batch == 1


def test_perturbed_runtime_raises_with_measured_difference(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_session = onnx_export._ort_session

    class Perturbed:
        def __init__(self, path: Path) -> None:
            self.inner = real_session(path)

        def run(self, names, feeds):
            return [y + np.float32(0.0125) for y in self.inner.run(names, feeds)]

    monkeypatch.setattr(onnx_export, "_ort_session", Perturbed)
    out = tmp_path / "model.onnx"
    with pytest.raises(ParityError) as info:
        export_onnx(checkpoint, out)
    err = info.value
    assert err.batch == 1 and err.atol == 1e-3
    assert err.max_abs_diff == pytest.approx(0.0125, abs=2e-4)
    assert "0.0125" in str(err) and str(out) in str(err)
    assert list(tmp_path.iterdir()) == []  # no model.onnx, no temporary file


class _TinyDepthNet(torch.nn.Module):
    """[B,3,H,W] → [B,1,H,W] positive depth; a fast stand-in where the DPT is not the point."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(self.head(torch.relu(self.conv(x)))) * 20.0


def test_impossible_tolerance_raises_and_keeps_old_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous model")
    with pytest.raises(ParityError) as info:
        export_model(_TinyDepthNet(), out, img_size=(16, 24), atol=1e-12)
    # float32 conv arithmetic differs a little between the two runtimes, but never by 1e-3
    assert 0.0 < info.value.max_abs_diff < 1e-3
    assert f"{info.value.max_abs_diff:.3g}" in str(info.value)
    assert out.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_wrong_output_shape_is_a_clear_error(tmp_path: Path) -> None:
    class Squeezed(_TinyDepthNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)[:, 0]

    with pytest.raises(ValueError, match=r"is \[2, 16, 24\], expected \[2, 1, 16, 24\]"):
        export_model(Squeezed(), tmp_path / "m.onnx", img_size=(16, 24))
    assert list(tmp_path.iterdir()) == []


def test_run_id_argument_overrides_checkpoint(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {}

    def fake_export(model, out_path, *, img_size, metadata, opset, atol):
        seen.update(metadata=metadata, img_size=img_size, opset=opset, atol=atol)
        return None

    monkeypatch.setattr(onnx_export, "export_model", fake_export)
    export_onnx(checkpoint, tmp_path / "m.onnx", opset=18, atol=5e-4, run_id="override")
    assert seen["metadata"]["mlflow_run_id"] == "override"
    assert seen["img_size"] == (H, W) and seen["opset"] == 18 and seen["atol"] == 5e-4


def test_log_onnx_to_mlflow(exported: OnnxExport, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("export-test", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    artifact_uri = log_onnx_to_mlflow(exported.path, run_id, uri)
    assert artifact_uri.endswith("/onnx/model.onnx")
    assert [f.path for f in client.list_artifacts(run_id, "onnx")] == ["onnx/model.onnx"]
    stored = tmp_path / "art" / run_id / "artifacts" / "onnx" / "model.onnx"
    assert stored.read_bytes() == exported.path.read_bytes()
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        log_onnx_to_mlflow(tmp_path / "missing.onnx", run_id, uri)
