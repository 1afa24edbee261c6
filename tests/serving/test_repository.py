"""A hostile repository cannot ask the local Triton for unbounded resources: instance counts,
warm-ups, batch sizes and queue delays over the limits are refused naming the field, before
anything is written (the red team's 100000 instances and 10^9 warm-up runs were copied as-is)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import H, W

from depth_common.config.serving import MAX_INSTANCES
from depth_common.errors import RepositoryError
from depth_common.export.triton import parse_model_config, write_model_config
from depth_common.serving.repository import build_local_repository


def _hostile(tiny: Path, dest: Path, edit) -> Path:
    shutil.copytree(tiny, dest)
    path = dest / "depth" / "config.pbtxt"
    cfg = parse_model_config(path)
    edit(cfg)
    write_model_config(cfg, path)
    return dest


def _warmup(count: int, batch: int = 1, dims: tuple[int, ...] = (3, H, W)):
    def edit(cfg) -> None:
        sample = cfg.model_warmup.add(name="big", batch_size=batch, count=count)
        sample.inputs["image"].data_type = cfg.input[0].data_type
        sample.inputs["image"].dims.extend(dims)
        sample.inputs["image"].zero_data = True

    return edit


def _instances(count: int):
    def edit(cfg) -> None:
        del cfg.instance_group[:]
        cfg.instance_group.add(count=count)

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_instances(100_000), r"instance_group count \(in all\) 100,000 is over the limit of 64"),
        (_warmup(1_000_000_000), r"model_warmup 'big' count 1,000,000,000 is over the limit of 100"),
        (_warmup(1, batch=10**6), r"model_warmup 'big' batch_size 1,000,000 is over the limit"),
        (_warmup(1, dims=(3, 100_000, 100_000)), r"model_warmup 'big' input 'image' batch x dims .* values"),
        (lambda cfg: setattr(cfg, "max_batch_size", 10**6), r"max_batch_size 1,000,000 is over"),
        (lambda cfg: setattr(cfg.dynamic_batching, "max_queue_delay_microseconds", 10**12),
         r"dynamic_batching max_queue_delay_microseconds 1,000,000,000,000 is over the limit"),
        (lambda cfg: cfg.dynamic_batching.preferred_batch_size.append(10**6),
         r"dynamic_batching preferred_batch_size 1000000 is outside \[1, max_batch_size="),
    ],
    ids=["instances", "warmup-count", "warmup-batch", "warmup-dims", "max-batch", "queue-delay",
         "preferred-batch"],
)  # fmt: skip
def test_a_repository_over_a_limit_is_refused_naming_the_field(
    tiny: Path, tmp_path: Path, edit, message: str
) -> None:
    repo = _hostile(tiny, tmp_path / "repo", edit)
    with pytest.raises(RepositoryError, match=f"^{repo / 'depth' / 'config.pbtxt'}: {message}"):
        build_local_repository(repo, tmp_path / "local")
    assert not (tmp_path / "local" / "depth").exists()  # nothing written for it


def test_up_to_the_limits_is_served(tiny: Path, tmp_path: Path) -> None:
    repo = _hostile(tiny, tmp_path / "repo", _instances(MAX_INSTANCES))
    assert build_local_repository(repo, tmp_path / "local") == ["depth"]
    local = parse_model_config(tmp_path / "local" / "depth" / "config.pbtxt")
    assert sum(g.count for g in local.instance_group) == MAX_INSTANCES
