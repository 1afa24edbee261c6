"""params.yaml loading: defaults from the seed, overrides, and errors that name the key."""

from pathlib import Path

import pytest
import yaml

from depth_common.config import ConfigError, Params, load_params, params_from_dict
from depth_common.presets import DEMO

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_carries_the_seed_values():
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
        ("training.epochs=-1", "training.epochs: got -1, expected an integer >= 0"),
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
