"""Canary analysis: figures and verdicts from hand-made samples (numpy references), the probe
set, and the report's one table per step."""

from __future__ import annotations

import math

import numpy as np
import pytest

from depth_common.config import DeployConfig, Params
from depth_common.data.synthetic import probe_scenes
from depth_common.deploy.analysis import Thresholds, VersionSample, analyse, mean_abs_rel
from depth_common.deploy.probe import ProbeSet
from depth_common.deploy.report import DeployResult, write_deploy_report
from depth_common.deploy.smoke import SmokeResult

RNG = np.random.default_rng(0)
# Below max_depth / 2, so that a doubled output is not clipped at 80 m.
TRUTH = tuple(RNG.uniform(2.0, 38.0, (8, 12)).astype(np.float32) for _ in range(4))
LIMITS = Thresholds(max_error_rate=0.0, max_latency_ratio=1.5, max_disagreement=0.3)


def _sample(label, depths, latencies, errors=()):
    return VersionSample(label, tuple(depths), tuple(latencies), tuple(errors))


def _abs_rel(pred: np.ndarray, ref: np.ndarray) -> float:
    """Reference: mean |pred - ref| / ref over ref's valid pixels (0.001 < ref <= 80)."""
    mask = (ref > 1e-3) & (ref <= 80)
    p = np.clip(pred, 1e-3, 80)
    return float(np.mean(np.abs(p[mask] - ref[mask]) / ref[mask]))


def test_identical_versions_pass_with_zero_disagreement() -> None:
    champ = _sample("champion v1", TRUTH, [10, 11, 12, 13])
    chall = _sample("challenger v2", TRUTH, [10, 11, 12, 13])
    step = analyse(champ, chall, TRUTH, LIMITS, 10)
    assert step.passed and step.disagreement == 0.0 and step.latency_ratio == 1.0
    assert step.champion.abs_rel_vs_truth == 0.0
    assert step.challenger.p50_ms == pytest.approx(11.5)
    assert step.challenger.p95_ms == pytest.approx(np.percentile([10, 11, 12, 13], 95))


def test_output_scaled_by_two_disagrees_by_exactly_one() -> None:
    champ = _sample("champion v1", TRUTH, [5.0] * 4)
    chall = _sample("challenger v2", [2 * d for d in TRUTH], [5.0] * 4)
    step = analyse(champ, chall, TRUTH, LIMITS, 10)
    assert step.disagreement == pytest.approx(1.0)
    assert step.challenger.abs_rel_vs_truth == pytest.approx(1.0)
    assert not step.passed
    assert step.failures() == ["disagreement (AbsRel vs champion) 1 > 0.3"]


def test_disagreement_matches_a_numpy_reference_and_skips_failed_probes() -> None:
    noisy = [d * RNG.uniform(0.8, 1.3, d.shape).astype(np.float32) for d in TRUTH]
    champ = _sample("champion v1", [TRUTH[0], TRUTH[1], None, TRUTH[3]], [3.0] * 3, ["boom"])
    chall = _sample("challenger v2", [noisy[0], None, noisy[2], noisy[3]], [3.0] * 3, ["reset"])
    expected = np.mean([_abs_rel(noisy[0], TRUTH[0]), _abs_rel(noisy[3], TRUTH[3])])
    step = analyse(champ, chall, TRUTH, LIMITS, 50)
    assert step.disagreement == pytest.approx(expected, rel=1e-9)
    assert step.champion.error_rate == 0.25 and step.challenger.error_rate == 0.25
    assert step.challenger.first_error == "reset"
    assert [c.passed for c in step.checks] == [False, True, step.disagreement <= 0.3]


def test_latency_ratio_is_p95_over_p95_and_bounded() -> None:
    champ = _sample("champion v1", TRUTH, [10, 10, 10, 20])
    chall = _sample("challenger v2", TRUTH, [10, 10, 10, 40])
    step = analyse(champ, chall, TRUTH, LIMITS, 10)
    ref = np.percentile([10, 10, 10, 40], 95) / np.percentile([10, 10, 10, 20], 95)
    assert step.latency_ratio == pytest.approx(ref)
    assert not step.passed and step.failures()[0].startswith("p95 latency ratio")
    # The bound is inclusive: a ratio equal to the threshold passes.
    exact = analyse(champ, chall, TRUTH, Thresholds(0.0, ref, 0.3), 10)
    assert exact.passed


def test_a_silent_champion_or_challenger_fails_the_step() -> None:
    down = _sample("champion v1", [None] * 4, [], ["refused"] * 4)
    up = _sample("challenger v2", TRUTH, [1.0] * 4)
    step = analyse(down, up, TRUTH, LIMITS, 10)
    assert math.isnan(step.latency_ratio) and math.isnan(step.disagreement)
    assert not step.passed  # nothing to compare with is not a pass
    step = analyse(up, down, TRUTH, LIMITS, 10)
    assert step.challenger.error_rate == 1.0 and not step.passed
    with pytest.raises(ValueError, match="probe counts differ"):
        analyse(up, _sample("c", TRUTH[:2], [1, 1]), TRUTH, LIMITS, 10)


def test_thresholds_come_from_params() -> None:
    cfg = Params().with_overrides(["deploy.max_disagreement=0.2"]).deploy
    assert Thresholds.from_config(cfg) == Thresholds(0.0, 1.5, 0.2)
    assert DeployConfig().canary_steps == (10, 50, 100)
    assert mean_abs_rel([None], [TRUTH[0]]) != mean_abs_rel([None], [TRUTH[0]])  # NaN


def test_probe_set_is_fixed_and_has_known_depth() -> None:
    a, b = ProbeSet(*probe_scenes((32, 64), 3)), ProbeSet(*probe_scenes((32, 64), 3))
    assert a.size == (32, 64) and len(a.images) == 3
    assert all(x.dtype == np.uint8 and x.shape == (32, 64, 3) for x in a.images)
    for x, y in zip(a.depths, b.depths, strict=True):
        np.testing.assert_array_equal(x, y)
    valid = a.depths[0][a.depths[0] > 0]
    assert valid.size > 0.3 * a.depths[0].size and 1.0 < float(np.median(valid)) < 200.0
    assert not np.array_equal(a.images[0], a.images[1])
    with pytest.raises(ValueError, match="count"):
        probe_scenes((32, 64), 0)
    with pytest.raises(ValueError, match="probe set: 0 images"):
        ProbeSet((), ())


def test_report_has_one_table_per_step_with_every_figure() -> None:
    champ = _sample("champion v1", TRUTH, [10, 11, 12, 13])
    good = analyse(champ, _sample("challenger v2", TRUTH, [10, 11, 12, 14]), TRUTH, LIMITS, 10)
    bad = analyse(
        champ, _sample("challenger v2", [2 * d for d in TRUTH], [10] * 4), TRUTH, LIMITS, 50
    )
    result = DeployResult(
        "local", "http://127.0.0.1:1", "depth", "2", "/srv/repo", SmokeResult(True, "ok"),
        strategy="canary", outcome="rolled back", reason="analysis failed at 50 %",
        champion_version="1", steps=(good, bad), aliases="champion v1",
    )  # fmt: skip
    text = write_deploy_report(result)
    assert text.startswith("# Deploy: rolled back")
    assert text.count("### Canary step:") == 2
    assert "### Canary step: 10 % of traffic on the challenger: passed" in text
    assert "### Canary step: 50 % of traffic on the challenger: FAILED" in text
    assert (
        "| disagreement: AbsRel of challenger vs champion | | 1.0000 | <= 0.3 | **FAIL** |" in text
    )
    assert f"| {good.latency_ratio:.2f} | <= 1.50 | pass |" in text
    assert (
        "| registry aliases | champion v1 |" in text and "| compared with champion | v1 |" in text
    )
    metrics = bad.metrics()
    assert metrics["canary_disagreement_abs_rel"] == pytest.approx(1.0)
    assert metrics["canary_passed"] == 0.0 and metrics["canary_challenger_error_rate"] == 0.0
