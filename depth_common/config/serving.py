"""The export (ONNX, TensorRT, Triton) and deploy (local or KServe, replace or canary) sections."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from depth_common.config.base import Bool, ConfigModel, Float, Int, Str, one_of, reject, spec

#: Largest batch any Triton model or TensorRT profile here is built for.
MAX_BATCH = 1024
#: Most model instances one repository may ask Triton for (also the cap when serving one).
MAX_INSTANCES = 64
#: Longest dynamic-batching queue delay, microseconds (1 s).
MAX_QUEUE_DELAY_US = 1_000_000
_BATCH = f"an integer in [1, {MAX_BATCH}] (images)"


class ExportConfig(ConfigModel):
    onnx_path: Str = "saved_models/model.onnx"
    opset: Int = spec(17, "an ONNX opset in [13, 21]", ge=13, le=21)
    parity_atol: Float = spec(1e-3, "a number in (0, 1] (metres)", gt=0, le=1)
    tensorrt: Bool = False
    trt_path: Str = "saved_models/model.plan"
    trt_fp16: Bool = True
    trt_min_batch: Int = spec(1, _BATCH, ge=1, le=MAX_BATCH)
    trt_opt_batch: Int = spec(4, _BATCH, ge=1, le=MAX_BATCH)
    trt_max_batch: Int = spec(8, _BATCH, ge=1, le=MAX_BATCH)
    triton_model_name: Str = spec(
        "depth", "a model name without '/'", min_length=1, pattern="^[^/]*$"
    )
    max_batch_size: Int = spec(8, _BATCH, ge=1, le=MAX_BATCH)
    preferred_batch_sizes: tuple[Int, ...] = (4, 8)
    max_queue_delay_us: Int = spec(
        2000, f"an integer in [0, {MAX_QUEUE_DELAY_US}] (microseconds)", ge=0, le=MAX_QUEUE_DELAY_US
    )
    instance_count: Int = spec(
        1, f"an integer in [1, {MAX_INSTANCES}] (model instances)", ge=1, le=MAX_INSTANCES
    )
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
    probe_images: Int = spec(16, "an integer in [1, 10000] (probe requests)", ge=1, le=10_000)
    max_error_rate: Float = spec(0.0, "a fraction in [0, 1] of failed probe requests", ge=0, le=1)
    max_latency_ratio: Float = spec(
        1.5, "a number in (0, 1000] (challenger p95 / champion p95)", gt=0, le=1000
    )
    max_disagreement: Float = spec(
        0.3, "a number in (0, 1000] (AbsRel of the challenger's depth against the champion's)",
        gt=0, le=1000,
    )  # fmt: skip
    name: Str = "depth"
    storage_uri: Str = ""
    timeout_s: Int = spec(600, "an integer in [1, 86400] (seconds)", ge=1, le=86_400)
    # Limits of the serving transformer (and the demo): what one request may cost.
    max_request_pixels: Int = spec(
        32_000_000, "an integer in [1, 1000000000] (decoded pixels of all images of a request)",
        ge=1, le=10**9,
    )  # fmt: skip
    max_response_bytes: Int = spec(
        64 * 1024 * 1024, "an integer in [1024, 2147483648] (bytes of one answer as sent)",
        ge=1024, le=2**31,
    )  # fmt: skip
    read_timeout_s: Float = spec(
        30.0, "seconds in (0, 300] a client has to send a request (headers and body)",
        gt=0, le=300,
    )  # fmt: skip
    max_connections: Int = spec(
        64, "an integer in [1, 10000] (connections and requests at once; 503 over it)",
        ge=1, le=10_000,
    )  # fmt: skip

    def transformer_args(self) -> list[str]:
        """The serving transformer's limits as its command-line arguments (the local stack and
        the InferenceService's transformer container both get them from here)."""
        return [
            "--max_request_pixels", str(self.max_request_pixels),
            "--max_response_bytes", str(self.max_response_bytes),
            "--read_timeout_s", repr(self.read_timeout_s),
            "--max_connections", str(self.max_connections),
        ]  # fmt: skip

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
