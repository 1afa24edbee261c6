"""The model, training, augmentation, evaluation, MLflow and promotion sections."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from depth_common.config.base import Bool, ConfigModel, Float, Int, Str, one_of, reject, spec

_PROBABILITY = "a probability in [0, 1]"
_LEARNING_RATE = "a learning rate in [0, 1000000]"
_LOSS_WEIGHT = "a loss weight in [0, 1000]"
_JITTER = "a colour-jitter strength in [0, 1]"


class ModelConfig(ConfigModel):
    encoder: Str = spec("vit_base_patch16_224", "a timm ViT model name", min_length=1)
    pretrained: Bool = True
    pretrained_path: Str | None = None
    decoder_features: Int = spec(256, "an integer in [8, 4096] (decoder channels)", ge=8, le=4096)
    hooks: tuple[Int, ...] = (2, 5, 8, 11)

    @field_validator("hooks")
    @classmethod
    def _four_increasing_blocks(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if (
            len(value) != 4
            or min(value) < 0
            or max(value) > 1023
            or list(value) != sorted(set(value))
        ):
            reject("", list(value), "four increasing block indices in [0, 1023]")
        return value


class TrainingConfig(ConfigModel):
    """The optimiser, the loss, the loop and the scale-out topology of ``train``; where its
    pods run and which Secrets they mount is :class:`~depth_common.config.ClusterConfig`."""

    epochs: Int = spec(50, "an integer in [0, 100000] (epochs)", ge=0, le=100_000)
    encoder_lr: Float = spec(1e-5, _LEARNING_RATE, ge=0, le=1e6)
    decoder_lr: Float = spec(1e-4, _LEARNING_RATE, ge=0, le=1e6)
    weight_decay: Float = spec(0.01, "a number in [0, 1] (AdamW weight decay)", ge=0, le=1)
    warmup_epochs: Int = spec(3, "an integer in [0, 100000] (epochs)", ge=0, le=100_000)
    scheduler: Literal["cosine", "constant"] = spec("cosine", one_of("cosine", "constant"))
    amp: Bool = True
    grad_clip: Float = spec(
        1.0, "a number in [0, 1000000] (max gradient norm; 0: no clipping)", ge=0, le=1e6
    )
    patience: Int = spec(10, "an integer in [1, 100000] (validations)", ge=1, le=100_000)
    si_weight: Float = spec(1.0, _LOSS_WEIGHT, ge=0, le=1000)
    si_lambda: Float = spec(0.85, "a number in [0, 1]", ge=0, le=1)
    grad_weight: Float = spec(0.5, _LOSS_WEIGHT, ge=0, le=1000)
    seed: Int = spec(
        42, f"an integer in [0, {2**32 - 1}] (a NumPy/PyTorch seed)", ge=0, le=2**32 - 1
    )
    device: Literal["auto", "cpu", "cuda"] = spec("auto", one_of("auto", "cpu", "cuda"))
    checkpoint_dir: Str = "saved_models"
    max_train_batches: Int | None = spec(
        None, "null or an integer in [1, 1000000000]", ge=1, le=10**9
    )
    init_from: Str = ""
    val_every: Int = spec(1, "an integer in [1, 100000] (epochs)", ge=1, le=100_000)
    checkpoint_every: Int = spec(1, "an integer in [1, 100000] (epochs)", ge=1, le=100_000)
    threads: Int = spec(
        0, "0 (from the CPUs the process may use) or a thread count in [1, 1024]", ge=0, le=1024
    )
    num_nodes: Int = spec(1, "an integer in [1, 1024] (nodes)", ge=1, le=1024)
    procs_per_node: Int = spec(1, "an integer in [1, 64] (processes a node)", ge=1, le=64)
    sync_batchnorm: Bool = False
    launcher: Literal["trainjob", "pytorchjob"] = spec("trainjob", one_of("trainjob", "pytorchjob"))
    train_gpu: Int = spec(0, "an integer in [0, 64] (GPUs a train pod)", ge=0, le=64)
    train_cpu: Int = spec(
        4, "CPU cores of the train task on a cluster, an integer in [1, 256]", ge=1, le=256
    )
    train_memory: Str = spec(
        "16G", "memory of the train task on a cluster, a Kubernetes quantity such as 16G or 8Gi",
        pattern=r"^[1-9][0-9]*(\.[0-9]+)?(k|M|G|T|Ki|Mi|Gi|Ti)?$",
    )  # fmt: skip
    micro_batch_size: Int | None = spec(None, "null or an integer in [1, 65536]", ge=1, le=65536)
    dist_timeout_s: Float = spec(1800.0, "seconds in (0, 604800] (a week)", gt=0, le=604_800)
    job_timeout_s: Int = spec(86400, "seconds in [1, 2592000] (30 days)", ge=1, le=2_592_000)
    runtime: Str = spec("torch-distributed", "a TrainingRuntime name", min_length=1)
    shared_pvc: Str = ""


class AugmentationConfig(ConfigModel):
    hflip_prob: Float = spec(0.5, _PROBABILITY, ge=0, le=1)
    brightness: Float = spec(0.2, _JITTER, ge=0, le=1)
    contrast: Float = spec(0.2, _JITTER, ge=0, le=1)
    saturation: Float = spec(0.2, _JITTER, ge=0, le=1)
    hue: Float = spec(0.05, "a number in [0, 0.5]", ge=0, le=0.5)
    crop_prob: Float = spec(0.5, _PROBABILITY, ge=0, le=1)
    crop_scale: tuple[Float, Float] = (0.7, 1.0)

    @field_validator("crop_scale")
    @classmethod
    def _area_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < value[0] <= value[1] <= 1.0:
            reject("", list(value), "[low, high] with 0 < low <= high <= 1")
        return value


class EvaluationConfig(ConfigModel):
    """How ``evaluate`` scores a split (the report states the resulting protocol in one line)."""

    resolution: Literal["full", "model"] = spec(
        "full",
        "full (prediction upsampled to the full-resolution ground truth) or model "
        "(ground truth at data.img_size)",
    )
    centre_crop: Bool = False
    median_scaling: Bool = True


class MlflowConfig(ConfigModel):
    tracking_uri: Str = spec(
        "sqlite:///mlflow.db", "an MLflow tracking URI (sqlite:///..., http://...)", min_length=1
    )
    experiment: Str = spec("depth-estimation", "a non-empty name", min_length=1)
    run_name: Str | None = None
    model_name: Str = spec("ViT+Decoder", "a non-empty name", min_length=1)


class PromotionConfig(ConfigModel):
    min_improvement: Float = spec(0.0, "a number in [0, 1000] (metres of test RMSE)", ge=0, le=1000)
    lock_timeout_s: Int = spec(
        600, "an integer in [1, 86400] (seconds to wait for the registry's promotion lock)",
        ge=1, le=86_400,
    )  # fmt: skip
    challenger_ttl_s: Int = spec(
        7200,
        "an integer in [60, 604800] (seconds a registered challenger counts as being rolled out)",
        ge=60,
        le=604_800,
    )


__all__ = [
    "AugmentationConfig",
    "EvaluationConfig",
    "MlflowConfig",
    "ModelConfig",
    "PromotionConfig",
    "TrainingConfig",
]
