"""Canary analysis: is the challenger as good a server as the champion? Pure functions.

Both versions answer the same probe set (:mod:`.probe`: scenes with known depth), interleaved
request by request. Three figures decide, each against a threshold of ``params.deploy``:

- **error rate** of the challenger: failed probe requests (transport or server error, wrong
  shape, NaN/inf) / requests sent; must be ``<= max_error_rate``;
- **p95 latency ratio**: challenger p95 / champion p95 (milliseconds, successful requests);
  must be ``<= max_latency_ratio``;
- **disagreement**: AbsRel of the challenger's depth against the champion's, averaged over the
  probes both answered; must be ``<= max_disagreement`` (an output scaled by 2 gives 1.0).

A champion that answers nothing leaves nothing to compare with: the analysis fails (the safe
side). Each version's AbsRel against the probes' true depth is reported too, for the reader.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from depth_common.config import DeployConfig
from depth_common.evaluation.metrics import per_image_metrics


@dataclass(frozen=True)
class Thresholds:
    max_error_rate: float
    max_latency_ratio: float
    max_disagreement: float

    @classmethod
    def from_config(cls, cfg: DeployConfig) -> Thresholds:
        return cls(cfg.max_error_rate, cfg.max_latency_ratio, cfg.max_disagreement)


@dataclass(frozen=True)
class VersionSample:
    """What the probe set got from one version: per probe, its depth (None = failed)."""

    label: str  # e.g. "champion v1"
    depths: tuple[np.ndarray | None, ...]  # HxW metres per probe, None where the request failed
    latencies_ms: tuple[float, ...]  # successful requests only
    errors: tuple[str, ...]  # one message per failed request

    @property
    def requests(self) -> int:
        return len(self.depths)


@dataclass(frozen=True)
class VersionFigures:
    label: str
    requests: int
    error_rate: float  # fraction of requests that failed
    p50_ms: float  # NaN when no request succeeded
    p95_ms: float
    abs_rel_vs_truth: float  # against the probes' known depth; NaN when none answered
    first_error: str | None


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    threshold: float
    passed: bool


@dataclass(frozen=True)
class StepAnalysis:
    """The analysis at one canary step (``traffic_percent`` on the challenger)."""

    traffic_percent: int
    champion: VersionFigures
    challenger: VersionFigures
    latency_ratio: float
    disagreement: float
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[str]:
        return [f"{c.name} {c.value:.3g} > {c.threshold:g}" for c in self.checks if not c.passed]

    def metrics(self) -> dict[str, float]:
        """Flat figures for MLflow (``canary_<figure>``; NaN ones are skipped by the logger)."""
        out = {
            "canary_latency_ratio": self.latency_ratio,
            "canary_disagreement_abs_rel": self.disagreement,
            "canary_passed": float(self.passed),
        }
        for role, fig in (("champion", self.champion), ("challenger", self.challenger)):
            out[f"canary_{role}_error_rate"] = fig.error_rate
            out[f"canary_{role}_p50_ms"] = fig.p50_ms
            out[f"canary_{role}_p95_ms"] = fig.p95_ms
            out[f"canary_{role}_abs_rel_vs_truth"] = fig.abs_rel_vs_truth
        return out


def mean_abs_rel(
    preds: Sequence[np.ndarray | None],
    refs: Sequence[np.ndarray | None],
    min_depth: float = 1e-3,
    max_depth: float = 80.0,
) -> float:
    """Mean over image pairs of AbsRel(pred, ref) (the evaluation's per-image metric).

    Pairs where either side is None, or the reference has no valid pixel, are left out; NaN
    when none is left.
    """

    pairs = [(p, r) for p, r in zip(preds, refs, strict=True) if p is not None and r is not None]
    if not pairs:
        return math.nan
    values, valid = per_image_metrics(
        np.stack([p for p, _ in pairs]), np.stack([r for _, r in pairs]), min_depth, max_depth
    )
    if not bool(valid.any()):
        return math.nan
    return float(values[valid, 0].mean())


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else math.nan


def figures(
    sample: VersionSample, truth: Sequence[np.ndarray], min_depth: float, max_depth: float
) -> VersionFigures:
    """One version's error rate, latency percentiles and AbsRel against the true depth."""
    n = sample.requests
    return VersionFigures(
        label=sample.label,
        requests=n,
        error_rate=len(sample.errors) / n if n else 1.0,
        p50_ms=_percentile(sample.latencies_ms, 50),
        p95_ms=_percentile(sample.latencies_ms, 95),
        abs_rel_vs_truth=mean_abs_rel(sample.depths, truth, min_depth, max_depth),
        first_error=sample.errors[0] if sample.errors else None,
    )


def _check(name: str, value: float, threshold: float) -> Check:
    # NaN (nothing to measure) fails: "not comparable" is not "fine".
    return Check(name, value, threshold, bool(value <= threshold))


def analyse(
    champion: VersionSample,
    challenger: VersionSample,
    truth: Sequence[np.ndarray],
    thresholds: Thresholds,
    traffic_percent: int,
    *,
    min_depth: float = 1e-3,
    max_depth: float = 80.0,
) -> StepAnalysis:
    """The step's figures and checks (see the module docstring); metres and milliseconds."""
    if not (champion.requests == challenger.requests == len(truth)):
        raise ValueError(
            f"probe counts differ: champion {champion.requests}, challenger "
            f"{challenger.requests}, truth {len(truth)}"
        )
    champ = figures(champion, truth, min_depth, max_depth)
    chall = figures(challenger, truth, min_depth, max_depth)
    ratio = chall.p95_ms / champ.p95_ms if champ.p95_ms > 0 else math.nan
    disagreement = mean_abs_rel(challenger.depths, champion.depths, min_depth, max_depth)
    checks = (
        _check("challenger error rate", chall.error_rate, thresholds.max_error_rate),
        _check("p95 latency ratio", ratio, thresholds.max_latency_ratio),
        _check("disagreement (AbsRel vs champion)", disagreement, thresholds.max_disagreement),
    )
    return StepAnalysis(traffic_percent, champ, chall, ratio, disagreement, checks)
