"""TensorRT export: CPU-checkable parts everywhere, the real engine on a GPU machine.

The engine tests need an NVIDIA GPU, the ``tensorrt`` package and ``cuda-python``; without
them they are skipped with the reason :func:`gpu_available` gives. On CPU this file checks the
optimisation profile from params, the FP16 tolerance arithmetic, the error when TensorRT is
missing, and the builder call sequence against a recording stand-in for the ``tensorrt``
module (TensorRT 10 with its FP16 flag, TensorRT 11 without).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyDepthNet

from depth_common.config import ExportConfig, params_from_dict
from depth_common.errors import ParityError, TensorRTUnavailable
from depth_common.export import tensorrt as trt_export
from depth_common.export.onnx import export_model, export_onnx
from depth_common.export.tensorrt import (
    FP16_ATOL_M,
    FP16_RTOL,
    build_engine,
    compare_outputs,
    gpu_available,
    parity_batches,
    profile_shapes,
)

GPU_OK, GPU_REASON = gpu_available()
requires_gpu = pytest.mark.skipif(
    not GPU_OK, reason=f"TensorRT engine tests need a GPU: {GPU_REASON}"
)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return export_model(TinyDepthNet(), out, img_size=(16, 32)).path


# --- CPU: configuration and tolerance arithmetic -------------------------------------------


def test_profile_shapes_from_params() -> None:
    cfg = params_from_dict(
        {}, ["export.trt_min_batch=2", "export.trt_opt_batch=4", "export.trt_max_batch=16"]
    ).export
    assert profile_shapes(cfg, (64, 128)) == {
        "min": (2, 3, 64, 128),
        "opt": (4, 3, 64, 128),
        "max": (16, 3, 64, 128),
    }
    assert parity_batches(cfg) == (2, 4, 16)
    assert parity_batches(ExportConfig()) == (1, 4, 8)


def test_fp16_rounding_of_depth_passes_and_real_errors_fail() -> None:
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.0, 80.0, size=(4, 1, 16, 32)).astype(np.float32)
    # A perfect FP16 engine still rounds its output to FP16: that alone must pass the gate.
    rounded = ref.astype(np.float16).astype(np.float32)
    stats = compare_outputs(ref, rounded, atol=FP16_ATOL_M, rtol=FP16_RTOL)
    assert stats["max_abs_diff"] == pytest.approx(
        float(np.max(np.abs(rounded.astype(np.float64) - ref))), rel=1e-12
    )
    # FP16 spacing is 2^-5 m in [32, 64) m and 2^-4 m above: half of it is the worst rounding
    assert 0.01 < stats["max_abs_diff"] <= 2.0**-5 + 1e-6
    assert stats["worst_excess"] < 0
    # 2 % too deep everywhere (e.g. a scale bug) fails; so does one NaN
    assert compare_outputs(ref, ref * 1.02, atol=FP16_ATOL_M, rtol=FP16_RTOL)["worst_excess"] > 0
    broken = rounded.copy()
    broken[0, 0, 3, 4] = np.nan
    assert compare_outputs(ref, broken, atol=FP16_ATOL_M, rtol=FP16_RTOL)["worst_excess"] == float(
        "inf"
    )


def test_compare_outputs_reference_numbers() -> None:
    ref = np.array([[1.0, 10.0], [0.0, 50.0]], dtype=np.float32)
    got = np.array([[1.06, 10.1], [0.04, 50.6]], dtype=np.float32)
    stats = compare_outputs(ref, got, atol=0.05, rtol=0.01)
    assert stats["max_abs_diff"] == pytest.approx(0.6, abs=1e-5)
    assert stats["max_rel_diff"] == pytest.approx(0.06, abs=1e-5)  # 0.06 / 1.0
    # bounds: 0.06, 0.15, 0.05, 0.55 → excesses 0.0, -0.05, -0.01, +0.05
    assert stats["worst_excess"] == pytest.approx(0.05, abs=1e-5)
    with pytest.raises(ValueError, match="shapes differ"):
        compare_outputs(ref, got[:1], atol=0.05, rtol=0.01)


# --- CPU: missing TensorRT ------------------------------------------------------------------


def test_missing_tensorrt_is_a_clear_error(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt → ImportError
    ok, reason = gpu_available()
    assert not ok and "'tensorrt' Python package" in reason
    with pytest.raises(TensorRTUnavailable, match=r"export\.tensorrt=false"):
        build_engine(tiny_onnx, tmp_path / "model.plan", ExportConfig())
    with pytest.raises(TensorRTUnavailable, match="tensorrt"):
        trt_export.TrtRunner(tmp_path / "model.plan")
    assert list(tmp_path.iterdir()) == []


# --- CPU: builder call sequence against a recording stand-in --------------------------------


class _FakeLogger:
    WARNING = 2
    trt: _FakeTensorRT  # set on the per-module subclass

    def __init__(self, severity: int) -> None:
        self.trt.calls["logger"] = severity


class _FakeTimingCache:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def serialize(self) -> bytes:
        return self.blob + b"|timed"


class _FakeProfile:
    def set_shape(self, name, lo, opt, hi) -> None:
        self.shapes = {name: (tuple(lo), tuple(opt), tuple(hi))}


class _FakeBuilderConfig:
    def __init__(self, calls: dict) -> None:
        self.calls = calls

    def set_memory_pool_limit(self, pool, size) -> None:
        self.calls["pool"] = (pool, size)

    def set_flag(self, flag) -> None:
        self.calls["flags_set"].append(flag)

    def clear_flag(self, flag) -> None:
        self.calls["flags_cleared"].append(flag)

    def add_optimization_profile(self, profile: _FakeProfile) -> None:
        self.calls["profile"] = profile.shapes

    def create_timing_cache(self, blob: bytes) -> _FakeTimingCache:
        self.calls["cache_in"] = bytes(blob)
        self.cache = _FakeTimingCache(bytes(blob))
        return self.cache

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> None:
        self.calls["ignore_mismatch"] = ignore_mismatch

    def get_timing_cache(self) -> _FakeTimingCache:
        return self.cache


class _FakeBuilder:
    trt: _FakeTensorRT

    def __init__(self, logger) -> None:
        pass

    def create_network(self, flags: int) -> str:
        self.trt.calls["network_flags"] = flags
        return "network"

    def create_builder_config(self) -> _FakeBuilderConfig:
        return _FakeBuilderConfig(self.trt.calls)

    def create_optimization_profile(self) -> _FakeProfile:
        return _FakeProfile()

    def build_serialized_network(self, network, config) -> bytes | None:
        return b"PLAN-BYTES" if self.trt.build_ok else None


class _FakeOnnxParser:
    trt: _FakeTensorRT

    def __init__(self, network, logger) -> None:
        self.num_errors = 0 if self.trt.parse_ok else 1

    def parse_from_file(self, path: str) -> bool:
        self.trt.calls["parsed"] = path
        return self.trt.parse_ok

    def get_error(self, i: int) -> str:
        return "node Resize_7: unsupported coordinate transformation"


class _FakeTensorRT(types.ModuleType):
    """A stand-in ``tensorrt`` module recording in ``calls`` what build_engine asks of it.

    ``version`` 11 and later has no FP16 flag and no EXPLICIT_BATCH (weak typing removed);
    ``parse_ok`` / ``build_ok`` False make the ONNX parser / the engine build fail.
    """

    def __init__(self, version: int, *, parse_ok: bool = True, build_ok: bool = True) -> None:
        super().__init__("tensorrt")
        self.__version__ = f"{version}.0.0"
        self.calls: dict = {"flags_set": [], "flags_cleared": []}
        self.parse_ok, self.build_ok = parse_ok, build_ok
        # build_engine constructs these itself: each subclass knows the module it belongs to.
        self.Logger = type("Logger", (_FakeLogger,), {"trt": self})
        self.Builder = type("Builder", (_FakeBuilder,), {"trt": self})
        self.OnnxParser = type("OnnxParser", (_FakeOnnxParser,), {"trt": self})
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        if version >= 11:
            self.BuilderFlag = types.SimpleNamespace(TF32="TF32")
            self.NetworkDefinitionCreationFlag = types.SimpleNamespace()
        else:
            self.BuilderFlag = types.SimpleNamespace(FP16="FP16", TF32="TF32")
            self.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)


def test_build_engine_tensorrt10_fp16(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _FakeTensorRT(10)
    calls = fake.calls
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    cfg = params_from_dict({}, ["export.trt_opt_batch=2", "export.trt_max_batch=6"]).export
    plan = build_engine(tiny_onnx, tmp_path / "out" / "model.plan", cfg)
    assert plan.read_bytes() == b"PLAN-BYTES"
    assert calls["network_flags"] == 1  # 1 << EXPLICIT_BATCH
    assert calls["parsed"] == str(tiny_onnx)
    assert calls["flags_set"] == ["FP16"] and calls["flags_cleared"] == []
    assert calls["profile"] == {"image": ((1, 3, 16, 32), (2, 3, 16, 32), (6, 3, 16, 32))}
    assert calls["pool"] == ("WORKSPACE", trt_export.DEFAULT_WORKSPACE_BYTES)
    assert calls["ignore_mismatch"] is False
    cache = tmp_path / "out" / "model.plan.timing.cache"
    assert calls["cache_in"] == b"" and cache.read_bytes() == b"|timed"
    # a rebuild starts from the saved timing cache
    build_engine(tiny_onnx, plan, cfg)
    assert calls["cache_in"] == b"|timed" and cache.read_bytes() == b"|timed|timed"
    assert sorted(p.name for p in plan.parent.iterdir()) == [
        "model.plan",
        "model.plan.timing.cache",
    ]


def test_build_engine_fp32_clears_tf32(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _FakeTensorRT(10)
    calls = fake.calls
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    cfg = params_from_dict({}, ["export.trt_fp16=false"]).export
    build_engine(tiny_onnx, tmp_path / "model.plan", cfg, timing_cache_path=tmp_path / "tc.bin")
    assert calls["flags_set"] == [] and calls["flags_cleared"] == ["TF32"]
    assert (tmp_path / "tc.bin").is_file()


def test_tensorrt11_fp16_without_modelopt_says_what_to_do(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _FakeTensorRT(11)
    calls = fake.calls
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setitem(sys.modules, "modelopt", None)
    monkeypatch.setitem(sys.modules, "modelopt.onnx", None)
    monkeypatch.setitem(sys.modules, "modelopt.onnx.autocast", None)
    with pytest.raises(TensorRTUnavailable, match=r"nvidia-modelopt.*export\.trt_fp16=false"):
        build_engine(tiny_onnx, tmp_path / "model.plan", ExportConfig())
    assert calls["network_flags"] == 0  # no EXPLICIT_BATCH member in TensorRT 11
    assert list(tmp_path.iterdir()) == []


def test_parser_and_build_failures_leave_no_plan(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _FakeTensorRT(10, parse_ok=False)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(RuntimeError, match="ONNX parser failed: node Resize_7"):
        build_engine(tiny_onnx, tmp_path / "model.plan", ExportConfig())
    fake = _FakeTensorRT(10, build_ok=False)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(RuntimeError, match="engine build failed"):
        build_engine(tiny_onnx, tmp_path / "model.plan", ExportConfig())
    assert list(tmp_path.iterdir()) == []


# --- GPU: the real engine -------------------------------------------------------------------


@pytest.fixture(scope="module")
def dpt_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from depth_common.model.checkpoint import save_checkpoint
    from depth_common.model.dpt import build_model

    params = params_from_dict(
        {},
        [
            "model.encoder=vit_tiny_patch16_224",
            "model.pretrained=false",
            "model.decoder_features=32",
            "data.img_size=[64,128]",
        ],
    )
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("dpt")
    ckpt = save_checkpoint(root / "best.pt", build_model(params), params, epoch=1, metrics={})
    return export_onnx(ckpt, root / "model.onnx").path


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("fp16", [True, False], ids=["fp16", "fp32"])
def test_engine_parity_and_dynamic_batch(dpt_onnx: Path, tmp_path: Path, fp16: bool) -> None:
    cfg = params_from_dict({}, [f"export.trt_fp16={str(fp16).lower()}"]).export
    result = trt_export.export_tensorrt(dpt_onnx, tmp_path / "model.plan", cfg)
    assert result.plan_path.is_file() and result.fp16 is fp16
    assert set(result.parity) == {"batch_1", "batch_4", "batch_8"}
    for stats in result.parity.values():
        assert stats["worst_excess"] <= 0
        # FP16 is not bit-exact; an FP32 engine meets the ONNX gate's 1e-3 m
        assert stats["max_abs_diff"] > 0 if fp16 else stats["max_abs_diff"] < 1e-3
    with trt_export.TrtRunner(result.plan_path) as runner:
        assert (runner.min_batch, runner.max_batch, runner.img_size) == (1, 8, (64, 128))
        x = np.random.default_rng(0).standard_normal((3, 3, 64, 128), dtype=np.float32)
        y = runner.infer(x)
        assert y.shape == (3, 1, 64, 128) and y.dtype == np.float32 and np.isfinite(y).all()
        # batching does not change a sample's result
        np.testing.assert_allclose(runner.infer(x[1:2])[0], y[1], atol=FP16_ATOL_M, rtol=FP16_RTOL)
        with pytest.raises(ValueError, match="outside the engine's profile"):
            runner.infer(np.zeros((9, 3, 64, 128), np.float32))
    assert (tmp_path / "model.plan.timing.cache").stat().st_size > 0


@pytest.mark.gpu
@requires_gpu
def test_engine_parity_gate_fails_on_a_wrong_plan(dpt_onnx: Path, tmp_path: Path) -> None:
    cfg = ExportConfig()
    plan = build_engine(dpt_onnx, tmp_path / "model.plan", cfg)
    # a different model with the same interface: the gate must catch it
    torch.manual_seed(1)
    other = export_model(TinyDepthNet(), tmp_path / "other.onnx", img_size=(64, 128)).path
    with pytest.raises(ParityError, match="TensorRT differs from ONNX Runtime on batch 1"):
        trt_export.check_trt_parity(plan, other, (1,))
