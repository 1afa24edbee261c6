"""DPT: shapes, non-negativity, sizes, parameter groups, local weights and ONNX export."""

from __future__ import annotations

import pytest
import torch

from depth_common.config import Params
from depth_common.model.dpt import DPT, build_model

TINY = "vit_tiny_patch16_224"


def tiny(**kw) -> DPT:
    kw.setdefault("decoder_features", 32)
    kw.setdefault("img_size", (32, 64))
    return DPT(TINY, pretrained=False, **kw)


@pytest.fixture(scope="module")
def model() -> DPT:
    torch.manual_seed(0)
    return tiny().eval()


def test_forward_pass_shape(model: DPT) -> None:
    x = torch.randn(3, 3, 32, 64)
    with torch.no_grad():
        assert model(x).shape == (3, 1, 32, 64)


def test_forward_pass_cpu(model: DPT) -> None:
    with torch.no_grad():
        y = model(torch.randn(1, 3, 32, 64))
    assert y.device.type == "cpu" and y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_output_non_negative(model: DPT) -> None:
    torch.manual_seed(1)
    # large inputs push activations around; the ReLU head must still never go negative
    with torch.no_grad():
        y = model(torch.randn(2, 3, 32, 64) * 10)
    assert (y >= 0).all()


def test_initial_output_near_init_depth() -> None:
    torch.manual_seed(0)
    m = tiny(init_depth=7.0).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, 32, 64))
    # the head's bias starts the ReLU alive around init_depth (docs/training-notes.md)
    assert (y > 0).float().mean() > 0.99
    assert 3.0 < y.median().item() < 11.0
    assert m.head.conv3.bias.item() == pytest.approx(7.0)


@pytest.mark.parametrize("features", [16, 48])
def test_different_decoder_channels(features: int) -> None:
    m = tiny(decoder_features=features).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, 32, 64))
    assert y.shape == (2, 1, 32, 64)
    assert m.reassemble[0].project.out_channels == features
    assert m.head.conv1.out_channels == features // 2


def test_stage_resolutions_follow_the_input() -> None:
    m = tiny(img_size=(64, 128))
    # reassemble at 1/4, 1/8, 1/16, 1/32 of the input; fusion outputs x2 each, finest at 1/2
    assert [s.out_size for s in m.reassemble] == [(16, 32), (8, 16), (4, 8), (2, 4)]
    assert [f.out_size for f in m.fusion] == [(32, 64), (16, 32), (8, 16), (4, 8)]
    assert m.config == {
        "encoder": TINY,
        "decoder_features": 32,
        "img_size": [64, 128],
        "hooks": [2, 5, 8, 11],
    }


def test_size_not_multiple_of_patch_is_refused() -> None:
    with pytest.raises(ValueError, match=r"multiples of .*patch size \(16, 16\)"):
        tiny(img_size=(40, 64))


def test_bad_hooks_are_refused() -> None:
    with pytest.raises(ValueError, match=r"hooks.*\[0, 11\]"):
        tiny(hooks=(2, 5, 8, 12))
    with pytest.raises(ValueError, match="four"):
        tiny(hooks=(2, 5, 8))


def test_param_groups_partition_parameters(model: DPT) -> None:
    groups = model.param_groups(1e-5, 1e-4)
    assert [g["lr"] for g in groups] == [1e-5, 1e-4]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    enc = {id(p) for p in model.encoder.parameters()}
    assert {id(p) for p in groups[0]["params"]} == enc


def test_pretrained_path_loads_local_weights(tmp_path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(3)
    src = tiny()
    sd = {k: v.contiguous() for k, v in src.encoder.state_dict().items()}
    save_file(sd, tmp_path / "enc.safetensors")
    torch.save(sd, tmp_path / "enc.pth")
    for name in ("enc.safetensors", "enc.pth"):
        torch.manual_seed(4)  # a different random init: equality proves the file was loaded
        m = tiny(pretrained_path=tmp_path / name)
        for k, v in m.encoder.state_dict().items():
            assert torch.equal(v, sd[k]), (name, k)


def test_missing_pretrained_path_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model.pretrained_path: .*nope.pth"):
        tiny(pretrained_path=tmp_path / "nope.pth")


def test_build_model_from_params() -> None:
    p = Params().with_overrides(
        [
            f"model.encoder={TINY}",
            "model.pretrained=false",
            "model.decoder_features=24",
            "data.img_size=[48,32]",
        ]
    )
    m = build_model(p)
    assert m.img_size == (48, 32) and m.decoder_features == 24 and m.encoder_name == TINY


def test_onnx_export_dynamic_batch(model: DPT, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 32, 64),),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["image"],
        output_names=["depth"],
        dynamic_axes={"image": {0: "batch"}, "depth": {0: "batch"}},
    )
    x = torch.randn(3, 3, 32, 64)
    out = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.shape == (3, 1, 32, 64)
    assert abs(out - ref).max() < 1e-3


def test_every_parameter_gets_a_gradient() -> None:
    """What lets DDP run without find_unused_parameters: nothing in the model is left idle."""
    torch.manual_seed(0)
    m = tiny(hooks=(1, 3, 5, 7))
    m(torch.randn(2, 3, 32, 64)).mean().backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []
    assert len(m.encoder.blocks) == 8  # the blocks after the last tap are gone
