"""Triton model repository: layout, config.pbtxt through Triton's protobuf, versions, errors."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from google.protobuf import text_format
from helpers import TinyDepthNet
from tritonclient.grpc import model_config_pb2 as mc

from depth_common.atomic import MARKER
from depth_common.config import ExportConfig, params_from_dict
from depth_common.errors import DataError, UnmanagedDirectoryError
from depth_common.export.onnx import export_model
from depth_common.export.triton import (
    build_triton_repository,
    parse_model_config,
    read_onnx_io,
)


def _export(path: Path, size: tuple[int, int]) -> Path:
    torch.manual_seed(0)
    return export_model(TinyDepthNet(), path, img_size=size).path


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("onnx") / "model.onnx", (32, 48))


def _files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MARKER
    )


def test_layout_and_config(onnx_file: Path, tmp_path: Path) -> None:
    repo = build_triton_repository(onnx_file, tmp_path / "repo", version=3)
    assert repo == tmp_path / "repo"
    assert _files(repo) == ["depth/3/model.onnx", "depth/config.pbtxt"]
    assert (repo / "depth/3/model.onnx").read_bytes() == onnx_file.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no staging directory left

    cfg = parse_model_config(repo / "depth/config.pbtxt")
    defaults = ExportConfig()
    assert cfg.name == "depth" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == defaults.max_batch_size == 8
    (inp,) = cfg.input
    (out,) = cfg.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("image", mc.TYPE_FP32, [3, 32, 48])
    assert (out.name, out.data_type, list(out.dims)) == ("depth", mc.TYPE_FP32, [1, 32, 48])
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    (group,) = cfg.instance_group
    assert (group.count, group.kind) == (1, mc.ModelInstanceGroup.KIND_AUTO)
    (warm,) = cfg.model_warmup
    assert warm.batch_size == 1
    assert list(warm.inputs) == ["image"]
    assert list(warm.inputs["image"].dims) == [3, 32, 48]
    assert warm.inputs["image"].zero_data and warm.inputs["image"].data_type == mc.TYPE_FP32


def test_dims_come_from_the_onnx_and_batching_from_params(tmp_path: Path) -> None:
    other = _export(tmp_path / "other.onnx", (16, 80))
    params = params_from_dict(
        {},
        [
            "data.img_size=[224,224]",  # deliberately different: the ONNX decides
            "export.max_batch_size=4",
            "export.preferred_batch_sizes=[2,4]",
            "export.max_queue_delay_us=500",
            "export.instance_count=2",
        ],
    )
    repo = build_triton_repository(
        other,
        tmp_path / "repo",
        model_name="dpt",
        export_cfg=params.export,
        instance_kind="KIND_CPU",
    )
    cfg = parse_model_config(repo / "dpt/config.pbtxt")
    assert cfg.name == "dpt"
    assert read_onnx_io(other) == (16, 80)
    assert list(cfg.input[0].dims) == [3, 16, 80] and list(cfg.output[0].dims) == [1, 16, 80]
    assert cfg.max_batch_size == 4
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert (cfg.instance_group[0].count, cfg.instance_group[0].kind) == (
        2,
        mc.ModelInstanceGroup.KIND_CPU,
    )


def test_plan_variant(onnx_file: Path, tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized engine bytes")
    params = params_from_dict({}, ["export.trt_max_batch=4", "export.trt_opt_batch=2"])
    repo = build_triton_repository(
        onnx_file, tmp_path / "repo", version=2, plan_path=plan, export_cfg=params.export
    )
    assert _files(repo) == [
        "depth/2/model.onnx",
        "depth/config.pbtxt",
        "depth_trt/2/model.plan",
        "depth_trt/config.pbtxt",
    ]
    assert (repo / "depth_trt/2/model.plan").read_bytes() == b"serialized engine bytes"
    onnx_cfg = parse_model_config(repo / "depth/config.pbtxt")
    trt_cfg = parse_model_config(repo / "depth_trt/config.pbtxt")
    assert trt_cfg.name == "depth_trt" and trt_cfg.platform == "tensorrt_plan"
    assert trt_cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    # capped at the engine profile's max batch; preferred sizes above it dropped
    assert (onnx_cfg.max_batch_size, trt_cfg.max_batch_size) == (8, 4)
    assert list(trt_cfg.dynamic_batching.preferred_batch_size) == [4]
    assert trt_cfg.input == onnx_cfg.input and trt_cfg.output == onnx_cfg.output


def test_new_versions_are_added_and_older_kept(onnx_file: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    build_triton_repository(onnx_file, repo, version=1)
    bigger = _export(tmp_path / "bigger.onnx", (48, 64))
    build_triton_repository(bigger, repo, version=2)
    assert _files(repo) == ["depth/1/model.onnx", "depth/2/model.onnx", "depth/config.pbtxt"]
    assert (repo / "depth/1/model.onnx").read_bytes() == onnx_file.read_bytes()
    # config.pbtxt follows the newest version
    assert list(parse_model_config(repo / "depth/config.pbtxt").input[0].dims) == [3, 48, 64]
    # the same version again replaces that version only
    build_triton_repository(onnx_file, repo, version=2)
    assert (repo / "depth/2/model.onnx").read_bytes() == onnx_file.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bigger.onnx", "repo"]


def test_written_text_is_what_tritons_protobuf_reads(onnx_file: Path, tmp_path: Path) -> None:
    repo = build_triton_repository(onnx_file, tmp_path / "repo")
    text = (repo / "depth/config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in text and "max_batch_size: 8" in text
    again = text_format.MessageToString(text_format.Parse(text, mc.ModelConfig()))
    assert again == text


def _rename_input(src: Path, dst: Path, new_name: str) -> Path:
    model = onnx.load(str(src))
    for node in model.graph.node:
        node.input[:] = [new_name if i == "image" else i for i in node.input]
    model.graph.input[0].name = new_name
    onnx.save(model, str(dst))
    return dst


def test_wrong_input_name_is_rejected(onnx_file: Path, tmp_path: Path) -> None:
    bad = _rename_input(onnx_file, tmp_path / "bad.onnx", "pixel_values")
    with pytest.raises(
        DataError, match=r"bad\.onnx: expected an input named 'image'.*pixel_values"
    ):
        build_triton_repository(bad, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_fixed_batch_and_non_onnx_are_rejected(tmp_path: Path) -> None:
    fixed = tmp_path / "fixed.onnx"
    torch.onnx.export(
        TinyDepthNet(),
        (torch.zeros(2, 3, 8, 8),),
        str(fixed),
        dynamo=False,
        input_names=["image"],
        output_names=["depth"],
        opset_version=17,
    )
    with pytest.raises(DataError, match="fixed batch size 2"):
        read_onnx_io(fixed)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf at all\xff" * 10)
    with pytest.raises(DataError, match="junk.onnx"):
        read_onnx_io(junk)
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        build_triton_repository(tmp_path / "nope.onnx", tmp_path / "repo")


def test_bad_arguments(onnx_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="version: got 0"):
        build_triton_repository(onnx_file, tmp_path / "r", version=0)
    with pytest.raises(ValueError, match="instance_kind"):
        build_triton_repository(onnx_file, tmp_path / "r", instance_kind="KIND_TPU")
    with pytest.raises(FileNotFoundError, match="missing.plan"):
        build_triton_repository(onnx_file, tmp_path / "r", plan_path=tmp_path / "missing.plan")
    assert not (tmp_path / "r").exists()


def test_parse_model_config_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "config.pbtxt"
    bad.write_text('name: "depth"\nmax_batch_sise: 8\n')
    with pytest.raises(DataError, match=r"config\.pbtxt: not a valid Triton model config"):
        parse_model_config(bad)


def test_versions_are_never_written_into_a_foreign_directory(
    onnx_file: Path, tmp_path: Path
) -> None:
    foreign = tmp_path / "home"
    (foreign / "depth" / "1").mkdir(parents=True)
    (foreign / "depth" / "1" / "thesis.tex").write_text("mine")
    with pytest.raises(UnmanagedDirectoryError, match=f"^{foreign}: not empty"):
        build_triton_repository(onnx_file, foreign, version=1)
    assert _files(foreign) == ["depth/1/thesis.tex"]
    repo = build_triton_repository(onnx_file, tmp_path / "repo", version=1)
    assert (repo / MARKER).is_file()
    build_triton_repository(onnx_file, repo, version=2)  # its own repository: versions added
    assert "depth/2/model.onnx" in _files(repo)


def test_the_canonical_focal_travels_from_onnx_metadata_to_every_config(tmp_path: Path) -> None:
    torch.manual_seed(0)
    meta = {"canonical_focal_px": "70.5"}
    src = export_model(TinyDepthNet(), tmp_path / "m.onnx", img_size=(32, 48), metadata=meta).path
    plan = tmp_path / "fake.plan"
    plan.write_bytes(b"engine")
    repo = build_triton_repository(src, tmp_path / "repo", plan_path=plan)
    for name in ("depth", "depth_trt"):
        cfg = parse_model_config(repo / name / "config.pbtxt")
        assert cfg.parameters["canonical_focal_px"].string_value == "70.5", name
    blind = build_triton_repository(_export(tmp_path / "b.onnx", (32, 48)), tmp_path / "blind")
    assert "canonical_focal_px" not in parse_model_config(blind / "depth/config.pbtxt").parameters


def test_lineage_of_the_onnx_metadata_becomes_config_parameters(tmp_path: Path) -> None:
    import hashlib

    torch.manual_seed(0)
    lineage = {"git_commit": "a" * 40, "data_digest": "b" * 32, "params_sha256": "c" * 64}
    meta = {**lineage, "encoder": "vit_tiny"}  # not a lineage key: stays out of the config
    onnx = export_model(TinyDepthNet(), tmp_path / "m.onnx", img_size=(32, 48), metadata=meta)
    repo = build_triton_repository(onnx.path, tmp_path / "repo", version=2)
    params = parse_model_config(repo / "depth/config.pbtxt").parameters
    got = {k: v.string_value for k, v in params.items()}
    sha = hashlib.sha256(onnx.path.read_bytes()).hexdigest()
    assert got == {**lineage, "onnx_sha256": sha}
