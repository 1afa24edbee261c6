"""The section models: each constraint fails with the dotted-key message, the cluster: section
(and its keys' former places under training: and deploy:), frozen values, JSON round trips."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from depth_common.config import ClusterConfig, DataConfig, Params, load_params, params_from_dict
from depth_common.errors import ConfigError
from depth_common.scaleout.job import job_from_params

ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = ROOT / "params.yaml"
CLUSTER_KEYS = (
    "mlflow_secret, namespace, node_selector, service_account, storage_secret, tolerations"
)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # a Literal
        (
            "training.scheduler=linear",
            "training.scheduler: got 'linear', expected one of cosine, constant",
        ),
        ("deploy.strategy=blue", "deploy.strategy: got 'blue', expected one of replace, canary"),
        (
            "data.layout=kitti",
            "data.layout: got 'kitti', expected one of auto, cityscapes, depth_xy",
        ),
        # a range (an integer given for a number is shown as the number it would be)
        ("training.si_lambda=1.5", "training.si_lambda: got 1.5, expected a number in [0, 1]"),
        ("export.opset=12", "export.opset: got 12, expected an ONNX opset in [13, 21]"),
        (
            "training.dist_timeout_s=0",
            "training.dist_timeout_s: got 0.0, expected seconds in (0, 604800] (a week)",
        ),
        (
            "promotion.challenger_ttl_s=59",
            "promotion.challenger_ttl_s: got 59, expected an integer in [60, 604800] (seconds a "
            "registered challenger counts as being rolled out)",
        ),
        (
            "training.max_train_batches=0",
            "training.max_train_batches: got 0, expected null or an integer in [1, 1000000000]",
        ),
        (
            "export.triton_model_name=a/b",
            "export.triton_model_name: got 'a/b', expected a model name without '/'",
        ),
        # an unknown key in a section
        (
            "cluster.zone=a",
            f"cluster.zone: got 'a', expected no such key; known keys: {CLUSTER_KEYS}",
        ),
        # a wrong type
        ("cluster.namespace=3", "cluster.namespace: got 3, expected a string"),
        ("training.amp=1", "training.amp: got 1, expected true or false"),
        ("data.batch_size=true", "data.batch_size: got True, expected an integer"),
        ("data.batch_size=2.0", "data.batch_size: got 2.0, expected an integer"),
        ("training.encoder_lr=fast", "training.encoder_lr: got 'fast', expected a number"),
        ("cluster.node_selector=a=b", "cluster.node_selector: got 'a=b', expected a list"),
        ("cluster.tolerations=[1]", "cluster.tolerations[0]: got 1, expected a string"),
        (
            "augmentation.crop_scale=[0.5]",
            "augmentation.crop_scale: got [0.5], expected a list of 2 values",
        ),
        # across fields of one section
        (
            "data.max_depth=0.0005",
            "data.max_depth: got 0.0005, expected a finite number > data.min_depth (0.001)",
        ),
        (
            "export.trt_opt_batch=9",
            "export.trt_opt_batch: got (1, 9, 8), expected 1 <= trt_min_batch",
        ),
        (
            "export.preferred_batch_sizes=[16]",
            "export.preferred_batch_sizes: got [16], expected sizes in "
            "[1, export.max_batch_size=8]",
        ),
        # the cluster section's own rules
        (
            "cluster.node_selector=[novalue]",
            "cluster.node_selector[0]: got 'novalue', expected 'key=value'",
        ),
        (
            "cluster.tolerations=[gpu, 'gpu:Sometimes']",
            "cluster.tolerations[1]: got 'gpu:Sometimes', expected effect one of NoSchedule, "
            "PreferNoSchedule, NoExecute",
        ),
        (
            "cluster.tolerations=['=x']",
            "cluster.tolerations[0]: got '=x', expected 'key=value:Effect', 'key:Effect' or 'key'",
        ),
    ],
)
def test_each_constraint_names_its_key(override, message):
    with pytest.raises(ConfigError) as exc:
        load_params(PARAMS_FILE, [override])
    assert str(exc.value).startswith(f"{PARAMS_FILE}: {message}")


def test_a_number_in_exponent_form_is_a_number():
    # PyYAML (YAML 1.1) reads 5e-4 as a string; it is the learning rate its writer meant.
    params = Params().with_overrides(["training.encoder_lr=5e-4", "augmentation.hue=1E-2"])
    assert (params.training.encoder_lr, params.augmentation.hue) == (5e-4, 0.01)
    loaded = params_from_dict({"training": {"decoder_lr": "2.5e-3"}})
    assert loaded.training.decoder_lr == 2.5e-3
    for bad, expected in (("'3'", "a number"), ("e5", "a number")):
        with pytest.raises(ConfigError, match=rf"training\.encoder_lr: got .*expected {expected}"):
            Params().with_overrides([f"training.encoder_lr={bad}"])
    with pytest.raises(ConfigError, match=r"training\.epochs: got '1e3', expected an integer"):
        Params().with_overrides(["training.epochs=1e3"])


def test_a_section_that_is_not_a_mapping():
    with pytest.raises(ConfigError, match=r"^cluster: got 3, expected a mapping of keys$"):
        params_from_dict({"cluster": 3})
    with pytest.raises(ConfigError, match=r"^deploy.replicas: got 2, expected no such key"):
        params_from_dict({"deploy": {"replicas": 2}})
    assert params_from_dict({"cluster": None}).cluster == ClusterConfig()  # an empty section


def test_cluster_section_feeds_the_train_job():
    p = load_params(
        PARAMS_FILE,
        [
            "cluster.namespace=team-a",
            "cluster.service_account=trainer",
            "cluster.node_selector=[pool=gpu, zone=a=b]",
            "cluster.tolerations=['dedicated=ml:NoExecute', gpu]",
            "cluster.mlflow_secret=mlflow-creds",
        ],
    )
    assert p.cluster.node_selector_pairs() == (("pool", "gpu"), ("zone", "a=b"))
    assert p.cluster.toleration_specs() == (
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"},
        {"key": "gpu", "operator": "Exists"},
    )
    job = job_from_params(p, name="depth-train", params_path="p", data_dir="d", out_dir="o")
    assert (job.namespace, job.service_account) == ("team-a", "trainer")
    assert job.node_selector == p.cluster.node_selector_pairs()
    assert {s for _, s, _ in job.secret_env} == {"mlflow-creds"}


@pytest.mark.parametrize(
    "override", ["training.node_selector=[pool=gpu]", "deploy.namespace=team-a"]
)
def test_cluster_settings_live_under_cluster_only(override):
    with pytest.raises(ConfigError) as exc:
        load_params(PARAMS_FILE, [override])
    assert override.split("=")[0] in str(exc.value) and "\n" not in str(exc.value)


def test_sections_are_frozen_hashable_and_round_trip_through_json():
    p = load_params(PARAMS_FILE, ["cluster.node_selector=[a=b]"])
    with pytest.raises(AttributeError):
        p.cluster.namespace = "other"  # type: ignore[misc]
    assert isinstance(p.data.img_size, tuple) and isinstance(p.cluster.node_selector, tuple)
    assert len({p, params_from_dict(p.to_dict())}) == 1
    assert params_from_dict(json.loads(json.dumps(p.to_dict()))) == p
    smaller = p.data.model_copy(update={"num_workers": 0})
    assert isinstance(smaller, DataConfig) and smaller.num_workers == 0 and p.data.num_workers == 2


def test_importing_the_config_stays_light():
    code = (
        "import sys; import depth_common.config; "
        "heavy = ('numpy', 'torch', 'timm', 'mlflow', 'kserve'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # the red team's values: each ended in a traceback or was accepted
        ("training.seed=1180591620717411303424", "training.seed: got 1180591620717411303424, "
         "expected an integer in [0, 4294967295] (a NumPy/PyTorch seed)"),
        ("export.instance_count=1000000", "export.instance_count: got 1000000, expected an "
         "integer in [1, 64] (model instances)"),
        ("model.decoder_features=1000000000", "model.decoder_features: got 1000000000, "
         "expected an integer in [8, 4096] (decoder channels)"),
        ("deploy.probe_images=1000000000", "deploy.probe_images: got 1000000000, expected an "
         "integer in [1, 10000] (probe requests)"),
        ("training.encoder_lr=.inf", "training.encoder_lr: got inf, expected a learning rate "
         "in [0, 1000000]"),
        ("training.dist_timeout_s=.inf", "training.dist_timeout_s: got inf, expected seconds "
         "in (0, 604800] (a week)"),
        ("augmentation.crop_scale=[.nan, 1.0]", "augmentation.crop_scale[0]: got nan, "
         "expected a finite number"),
        ("data.img_size=[100000, 64]", "data.img_size: got [100000, 64], expected sizes in "
         "[1, 8192] (pixels)"),
        ("deploy.max_request_pixels=0", "deploy.max_request_pixels: got 0, expected an integer "
         "in [1, 1000000000] (decoded pixels of all images of a request)"),
        ("deploy.read_timeout_s=.inf", "deploy.read_timeout_s: got inf, expected seconds in "
         "(0, 300] a client has to send a request (headers and body)"),
    ],
)  # fmt: skip
def test_every_number_has_a_finite_range(override, message):
    with pytest.raises(ConfigError) as exc:
        load_params(PARAMS_FILE, [override])
    assert str(exc.value) == f"{PARAMS_FILE}: {message}"
    assert "\n" not in str(exc.value)


def _numeric_fields(model) -> list[tuple[str, object]]:
    import typing

    from pydantic import BaseModel

    found = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            found += [(f"{name}.{k}", f) for k, f in _numeric_fields(ann)]
            continue
        if typing.get_origin(ann) is tuple:
            continue  # lists: bounded by their own validators (img_size, hooks, canary_steps)
        args = {ann} | {
            typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
            for a in typing.get_args(ann)
        }  # Int | None: the int inside the Annotated of the union
        if args & {int, float}:
            found.append((name, info))
    return found


def test_no_scalar_number_is_left_without_an_upper_bound():
    """Every int/float key (not lists, checked by their own validators) states a maximum."""
    from depth_common.config import Params

    unbounded = [
        key
        for key, info in _numeric_fields(Params)
        if not any(hasattr(m, "le") or hasattr(m, "lt") for m in info.metadata)
        and key != "data.max_depth"  # bounded by its model validator, with data.min_depth
    ]
    assert unbounded == []
