"""params.yaml loading: the reference defaults, overrides, and errors that name the key; the
known-encoder list kept equal to the installed timm's."""

from pathlib import Path

import pytest
import yaml
from helpers import DEMO

from depth_common.config import Params, load_params, params_from_dict
from depth_common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_params_yaml_carries_the_reference_values():
    p = load_params(ROOT / "params.yaml")
    assert p.data.img_size == (224, 224)
    assert p.data.max_depth == 80.0
    assert p.data.baseline == pytest.approx(0.209313)
    assert p.data.focal_length == pytest.approx(2262.52)
    assert p.model.encoder == "vit_base_patch16_224"
    assert p.model.decoder_features == 256
    assert (p.training.encoder_lr, p.training.decoder_lr) == (1e-5, 1e-4)
    assert p.training.weight_decay == 0.01 and p.training.warmup_epochs == 3
    assert p.training.grad_clip == 1.0 and p.training.patience == 10
    assert p.mlflow.tracking_uri == "sqlite:///mlflow.db"
    assert p.mlflow.model_name == "ViT+Decoder"
    assert p.export.opset == 17


def test_params_yaml_lists_every_field():
    """params.yaml is the one config file: every dataclass field appears in it."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == set(Params().to_dict())
    for section, values in Params().to_dict().items():
        assert set(raw[section]) == set(values), section


def test_overrides_parse_yaml_values():
    p = load_params(
        ROOT / "params.yaml",
        [
            "training.epochs=2",
            "data.img_size=[64, 128]",
            "model.pretrained=false",
            "data.num_cities=null",
        ],
    )
    assert p.training.epochs == 2
    assert p.data.img_size == (64, 128)
    assert p.model.pretrained is False
    assert p.data.num_cities is None


def test_square_img_size_and_int_for_float():
    p = params_from_dict({"data": {"img_size": 96, "max_depth": 50}})
    assert p.data.img_size == (96, 96)
    assert p.data.max_depth == 50.0 and isinstance(p.data.max_depth, float)


def test_params_are_frozen_and_round_trip():
    p = load_params(ROOT / "params.yaml", DEMO)
    with pytest.raises(AttributeError):
        p.training.epochs = 3  # type: ignore[misc]
    assert params_from_dict(p.to_dict()) == p
    assert p.flat()["model.encoder"] == "vit_tiny_patch16_224"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        (
            "training.epochs=-1",
            "training.epochs: got -1, expected an integer in [0, 100000] (epochs)",
        ),
        ("training.epochs=two", "training.epochs: got 'two', expected an integer"),
        ("training.epoch=1", "training.epoch: got 1, expected no such key"),
        ("trainin.epochs=1", "trainin.epochs: no such section"),
        (
            "data.img_size=[1,2,3]",
            "data.img_size: got [1, 2, 3], expected an integer or [height, width]",
        ),
        ("data.img_size=abc", "data.img_size: got 'abc', expected an integer or [height, width]"),
        ("data.max_depth=0", "data.max_depth: got 0.0"),
        ("model.pretrained=maybe", "model.pretrained: got 'maybe', expected true or false"),
        ("augmentation.hflip_prob=1.5", "augmentation.hflip_prob: got 1.5, expected a probability"),
        ("augmentation.crop_scale=[0.9,0.5]", "augmentation.crop_scale"),
        ("deploy.target=cloud", "deploy.target: got 'cloud', expected one of local, kserve"),
        ("export.hf_repo_id=noslash", "export.hf_repo_id"),
        ("model.hooks=[5,2,8,11]", "model.hooks"),
        ("training.epochs", "expected section.key=value"),
        ("data.max_depth=.inf", "data.max_depth: got inf, expected a finite number"),
        ("data.min_depth=.nan", "data.min_depth: got nan, expected a number in (0, 1000] (metres)"),
        ("data.num_workers=65", "data.num_workers: got 65, expected an integer in [0, 64]"),
        ("data.crop_bottom=1.0", "data.crop_bottom: got 1.0, expected null"),
        ("data.camera=maybe", "data.camera: got 'maybe', expected require"),
        ("data.splits=[train,train]", "data.splits: got ['train', 'train']"),
        ("data.splits=[../x]", "data.splits: got ['../x']"),
        ("data.train_splits=[train,test]", "data.train_splits: got ['train', 'test']"),
        ("data.train_splits=[train_extra]", "data.train_splits: got ['train_extra'], expected"),
        ("evaluation.resolution=half", "evaluation.resolution: got 'half', expected full"),
        ("model.encoder=resnet50", "model.encoder: 'resnet50' is not a supported encoder"),
        ("model.encoder=vit_nope", "timm vision_transformer ViTs"),
        (
            "data.img_size=[200,100]",
            "data.img_size: [200, 100] is not a multiple of vit_base_patch16_224's patch size 16 "
            "(expected e.g. [192, 96])",
        ),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as exc:
        load_params(ROOT / "params.yaml", [override])
    assert needle in str(exc.value)
    assert "params.yaml" in str(exc.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the params file"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(bad)
    bad.write_text("data: 3\n")
    with pytest.raises(ConfigError, match="data: got 3, expected a mapping"):
        load_params(bad)


def test_train_extra_and_layout_defaults():
    p = load_params(
        ROOT / "params.yaml",
        ["data.splits=[train, train_extra, val, test]", "data.train_splits=[train, train_extra]"],
    )
    assert p.data.train_splits == ("train", "train_extra")
    assert p.data.crop_bottom_for("cityscapes") == 0.25
    assert p.data.crop_bottom_for("depth_xy") == 0.0
    crop0 = p.with_overrides(["data.crop_bottom=0"]).data
    assert crop0.crop_bottom_for("cityscapes") == 0.0
    ok = load_params(ROOT / "params.yaml", ["model.encoder=vit_small_patch14_dinov2"])
    with pytest.raises(ConfigError, match="patch size 14 .expected e.g. .224, 224.."):
        ok.with_overrides(["data.img_size=[224,230]"])


def test_data_config_alone():
    from depth_common.config import data_config_from_dict

    cfg = data_config_from_dict({"data": {"img_size": [70, 140], "camera": "default"}})
    assert cfg.img_size == (70, 140) and cfg.camera == "default"  # no encoder to fit here
    with pytest.raises(ConfigError, match="data.camera"):
        data_config_from_dict({"data": {"camera": "x"}})
    with pytest.raises(ConfigError, match="data_params"):
        data_config_from_dict({"data": {}, "model": {}})


def test_non_utf8_params_file(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("mlflow:\n  experiment: profondeur-\xe9t\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9 at offset"):
        load_params(bad)


def test_configure_time_checks_import_neither_timm_nor_torch():
    import subprocess
    import sys

    code = (
        "import sys; from depth_common.config import load_params; "
        f"load_params({str(ROOT / 'params.yaml')!r}, ['model.encoder=vit_tiny_patch16_224']); "
        "import components.configure; "
        "print(sorted(m for m in ('timm', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_known_encoders_match_timm():
    """vit_encoders.json lists exactly timm's vision_transformer models with a _patch<N> name;
    when timm changes, regenerate it (the docstring of depth_common.config.encoders says how)."""
    import re

    import timm
    import torch

    from depth_common.config.encoders import patch_size, supported_encoders

    listed = {
        n for n in timm.list_models(module="vision_transformer") if re.search(r"_patch\d+", n)
    }
    assert supported_encoders() == listed
    # The patch size in the name is the built model's, for each patch size in the family.
    by_patch = {}
    for name in sorted(listed, key=len):
        by_patch.setdefault(patch_size(name), name)
    assert {8, 14, 16, 32} <= set(by_patch)
    for patch, name in by_patch.items():
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        assert tuple(model.patch_embed.patch_size) == (patch, patch), name
        assert hasattr(model, "forward_intermediates") and hasattr(model, "blocks"), name
