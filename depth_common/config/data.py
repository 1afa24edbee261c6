"""The ``data:`` section: where the frames are, how they are split, cropped and sized."""

from __future__ import annotations

import math
import typing
from typing import Any, Literal

from pydantic import field_validator, model_validator

from depth_common.config.base import Bool, ConfigModel, Float, Int, Str, reject, spec

DataLayout = Literal["cityscapes", "depth_xy"]
#: Layout names of ``data.layout`` (besides ``auto``); ``depth_xy`` is ``depth_X/`` + ``depth_y/``.
DATA_LAYOUTS: tuple[str, ...] = typing.get_args(DataLayout)
MAX_NUM_WORKERS = 64
MAX_IMG_SIDE = 8192  # data.img_size: pixels a side the model is trained at


def _safe_split_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


class DataConfig(ConfigModel):
    raw_dir: Str = "data/raw"
    processed_dir: Str = "data/processed"
    layout: Literal["auto", DataLayout] = spec("auto", "one of auto, " + ", ".join(DATA_LAYOUTS))
    splits: tuple[Str, ...] = ("train", "val", "test")
    train_splits: tuple[Str, ...] = ("train",)
    camera: Literal["require", "default"] = spec(
        "require",
        "require (a missing or unreadable camera JSON is an error) or default "
        "(fall back to data.baseline / data.focal_length)",
    )
    crop_bottom: Float | None = spec(
        None, "null (0.25 for the Cityscapes layout, 0 otherwise) or a fraction in [0, 1)",
        ge=0.0, lt=1.0,
    )  # fmt: skip
    img_size: tuple[Int, Int] = (224, 224)
    batch_size: Int = spec(8, "an integer in [1, 65536] (images a step)", ge=1, le=65536)
    num_workers: Int = spec(2, f"an integer in [0, {MAX_NUM_WORKERS}]", ge=0, le=MAX_NUM_WORKERS)
    num_cities: Int | None = spec(None, "null or an integer in [1, 10000]", ge=1, le=10_000)
    min_depth: Float = spec(1e-3, "a number in (0, 1000] (metres)", gt=0, le=1000)
    max_depth: Float = 80.0  # finite and > min_depth: checked with min_depth below
    baseline: Float = spec(0.209313, "a number in (0, 100] (metres)", gt=0, le=100)
    focal_length: Float = spec(2262.52, "a number in (0, 1000000] (pixels)", gt=0, le=1e6)
    # Train for the canonical camera (Metric3D): each target times f_canonical / f_image, so
    # depth follows the focal at inference. false: every camera is treated as the same one.
    camera_aware: Bool = True

    @field_validator("img_size", mode="before")
    @classmethod
    def _square_or_pair(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return (value, value)  # a square size given as one integer
        if not (isinstance(value, list | tuple) and len(value) == 2):
            reject("", value, "an integer or [height, width]")
        return value

    @field_validator("img_size")
    @classmethod
    def _positive_sizes(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not all(0 < s <= MAX_IMG_SIDE for s in value):
            reject("", list(value), f"sizes in [1, {MAX_IMG_SIDE}] (pixels)")
        return value

    @field_validator("splits")
    @classmethod
    def _distinct_folder_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or not all(map(_safe_split_name, value)) or len(set(value)) != len(value):
            reject(
                "", list(value),
                "distinct split folder names, e.g. [train, val, test] (train_extra allowed)",
            )  # fmt: skip
        return value

    @model_validator(mode="after")
    def _depth_range_and_train_splits(self) -> DataConfig:
        if not (math.isfinite(self.max_depth) and self.max_depth > self.min_depth):
            reject(
                "max_depth", self.max_depth,
                f"a finite number > data.min_depth ({self.min_depth}) (metres)",
            )  # fmt: skip
        if self.max_depth > 1000:
            reject("max_depth", self.max_depth, "a number in (data.min_depth, 1000] (metres)")
        train = set(self.train_splits)
        if not train or not train <= set(self.splits) or train & {"val", "test"}:
            reject(
                "train_splits", list(self.train_splits),
                f"splits of data.splits {list(self.splits)} to train on, never val or test "
                "(e.g. [train] or [train, train_extra])",
            )  # fmt: skip
        return self

    def crop_bottom_for(self, layout: str) -> float:
        """The bottom fraction cut off for ``layout``: ``crop_bottom``, or when it is null 0.25
        for Cityscapes (the ego car's hood, as the community protocol crops it) and 0 otherwise."""
        if self.crop_bottom is not None:
            return self.crop_bottom
        return 0.25 if layout == "cityscapes" else 0.0
