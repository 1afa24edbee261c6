"""The export (ONNX, TensorRT, Triton) and deploy (local or KServe, replace or canary) sections."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from depth_common.config.base import Bool, ConfigModel, Float, Int, Str, one_of, reject, spec

_AT_LEAST_ONE = "an integer >= 1"


class ExportConfig(ConfigModel):
    onnx_path: Str = "saved_models/model.onnx"
    opset: Int = spec(17, "an ONNX opset in [13, 21]", ge=13, le=21)
    parity_atol: Float = spec(1e-3, "a number > 0", gt=0)
    tensorrt: Bool = False
    trt_path: Str = "saved_models/model.plan"
    trt_fp16: Bool = True
    trt_min_batch: Int = 1
    trt_opt_batch: Int = 4
    trt_max_batch: Int = 8
    triton_model_name: Str = spec(
        "depth", "a model name without '/'", min_length=1, pattern="^[^/]*$"
    )
    max_batch_size: Int = spec(8, _AT_LEAST_ONE, ge=1)
    preferred_batch_sizes: tuple[Int, ...] = (4, 8)
    max_queue_delay_us: Int = spec(2000, "an integer >= 0 (microseconds)", ge=0)
    instance_count: Int = spec(1, _AT_LEAST_ONE, ge=1)
    repository_dir: Str = "saved_models/triton_repository"
    hf_repo_id: Str = spec("", "'' (skip) or 'owner/name'", pattern="^([^/]*/[^/]*)?$")

    @model_validator(mode="after")
    def _batch_sizes_nest(self) -> ExportConfig:
        trt = (self.trt_min_batch, self.trt_opt_batch, self.trt_max_batch)
        if not 1 <= trt[0] <= trt[1] <= trt[2]:
            reject("trt_opt_batch", trt, "1 <= trt_min_batch <= trt_opt_batch <= trt_max_batch")
        if not all(1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes):
            reject(
                "preferred_batch_sizes", list(self.preferred_batch_sizes),
                f"sizes in [1, export.max_batch_size={self.max_batch_size}]",
            )  # fmt: skip
        return self


class DeployConfig(ConfigModel):
    """What is served and how a new version rolls out; the namespace it is served in is
    ``cluster.namespace``."""

    target: Literal["local", "kserve"] = spec("local", one_of("local", "kserve"))
    strategy: Literal["replace", "canary"] = spec("canary", one_of("replace", "canary"))
    canary_steps: tuple[Int, ...] = (10, 50, 100)
    probe_images: Int = spec(16, _AT_LEAST_ONE, ge=1)
    max_error_rate: Float = spec(0.0, "a fraction in [0, 1] of failed probe requests", ge=0, le=1)
    max_latency_ratio: Float = spec(1.5, "a number > 0 (challenger p95 / champion p95)", gt=0)
    max_disagreement: Float = spec(
        0.3, "a number > 0 (AbsRel of the challenger's depth against the champion's)", gt=0
    )
    name: Str = "depth"
    storage_uri: Str = ""
    timeout_s: Int = spec(600, _AT_LEAST_ONE, ge=1)

    @field_validator("canary_steps")
    @classmethod
    def _steps_end_in_promotion(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        steps = list(value)
        if not (steps and min(steps) >= 1 and steps == sorted(set(steps)) and steps[-1] == 100):
            reject(
                "", steps,
                "increasing traffic percentages in [1, 100] ending with 100 (the promotion)",
            )  # fmt: skip
        return value
