"""bench/bench_containers.py: the side-by-side summary and its verdict (no pipeline run)."""

from __future__ import annotations

import pytest

from bench.bench_containers import TARGET, format_table, summarise


def _run(runner: str, wall: float, train: float) -> dict:
    return {"runner": runner, "wall_s": wall, "tasks": {"configure": 1.0, "train": train}}


def test_ratio_is_of_summed_wall_times_over_all_rounds() -> None:
    runs = [
        _run("subprocess", 100.0, 60.0),
        _run("docker", 120.0, 62.0),
        _run("docker", 150.0, 70.0),
        _run("subprocess", 100.0, 58.0),
    ]
    s = summarise(runs)
    assert s["wall_s"] == {"subprocess": 200.0, "docker": 270.0}
    assert s["ratio_docker_vs_subprocess"] == pytest.approx(1.35)
    assert not s["met"]  # 1.35 > 1.3
    assert s["per_task_s"]["train"] == {"subprocess": 118.0, "docker": 132.0}
    table = format_table(s)
    assert "1.35x" in table and "MISSED" in table and f"<= {TARGET}x" in table


def test_within_target_passes() -> None:
    s = summarise([_run("subprocess", 100.0, 60.0), _run("docker", 129.0, 61.0)])
    assert s["met"] and "PASS" in format_table(s)
