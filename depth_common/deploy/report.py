"""What a deploy did, as a dataclass and as the Markdown report the pipeline shows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from depth_common.deploy.analysis import StepAnalysis
from depth_common.deploy.smoke import SmokeResult
from depth_common.evaluation.charts import step_chart
from depth_common.evaluation.viz import bytes_data_uri


@dataclass(frozen=True)
class DeployResult:
    """One deploy: where the model is served, which version, and its smoke test."""

    target: str  # "kserve" | "local"
    endpoint: str  # v2 base URL (http://host[:port]); for local, the address it was tested on
    model_name: str  # Triton model name the smoke test called
    model_version: str  # MLflow model version being served
    source: str  # storageUri (kserve) or repository directory (local)
    smoke: SmokeResult
    resource: str | None = None  # "namespace/name" of the InferenceService (kserve)
    rolled_back_to: str | None = None  # storageUri restored after a failure
    strategy: str = "replace"  # "replace" | "canary"
    outcome: str = ""  # promoted | rolled back | replaced | superseded (empty: as smoke says)
    reason: str = ""  # why that outcome, in one line
    champion_version: str | None = None  # the version it was compared with (canary)
    steps: tuple[StepAnalysis, ...] = field(default_factory=tuple)  # one per analysed step
    aliases: str = ""  # the registry's aliases after the deploy, e.g. "champion v2, previous v1"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(value: float, fmt: str, unit: str = "") -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:{fmt}}{unit}"


def step_table(step: StepAnalysis) -> list[str]:
    """One canary step as a Markdown section: verdict, then every figure with its threshold."""
    champ, chall = step.champion, step.challenger
    verdict = "passed" if step.passed else "FAILED"
    lines = [
        f"### Canary step: {step.traffic_percent} % of traffic on the challenger: {verdict}",
        "",
        f"| figure | {_cell(champ.label)} | {_cell(chall.label)} | threshold | result |",
        "| --- | --- | --- | --- | --- |",
        f"| probe requests | {champ.requests} | {chall.requests} | | |",
    ]
    by_name = {c.name: c for c in step.checks}
    err = by_name.get("challenger error rate")
    lat = by_name.get("p95 latency ratio")
    dis = by_name.get("disagreement (AbsRel vs champion)")

    def result(check) -> str:
        return "" if check is None else ("pass" if check.passed else "**FAIL**")

    def limit(check, fmt: str) -> str:
        return "" if check is None else f"<= {check.threshold:{fmt}}"

    lines += [
        f"| error rate | {_num(champ.error_rate, '.1%')} | {_num(chall.error_rate, '.1%')} "
        f"| {limit(err, '.1%')} | {result(err)} |",
        f"| p50 latency | {_num(champ.p50_ms, '.2f', ' ms')} | {_num(chall.p50_ms, '.2f', ' ms')}"
        " | | |",
        f"| p95 latency | {_num(champ.p95_ms, '.2f', ' ms')} | {_num(chall.p95_ms, '.2f', ' ms')}"
        " | | |",
        f"| p95 latency ratio (challenger / champion) | | {_num(step.latency_ratio, '.2f')} "
        f"| {limit(lat, '.2f')} | {result(lat)} |",
        f"| disagreement: AbsRel of challenger vs champion | | {_num(step.disagreement, '.4f')} "
        f"| {limit(dis, '.3g')} | {result(dis)} |",
        f"| AbsRel vs the probes' true depth | {_num(champ.abs_rel_vs_truth, '.4f')} "
        f"| {_num(chall.abs_rel_vs_truth, '.4f')} | (for information) | |",
    ]
    for fig in (champ, chall):
        if fig.first_error:
            lines += ["", f"First error of {fig.label}: `{_cell(fig.first_error)[:300]}`"]
    return lines


def write_deploy_report(result: DeployResult) -> str:
    """Markdown: outcome, endpoint, model version, smoke test and, for a canary, one table per
    analysed step (latencies in milliseconds, depth in metres)."""
    smoke = result.smoke
    status = result.outcome or ("passed" if smoke.ok else "FAILED")
    rows = [
        ("target", result.target),
        ("strategy", result.strategy),
        ("endpoint", f"`{result.endpoint}`"),
        ("model", f"`{result.model_name}`"),
        ("model version", result.model_version),
        ("source", f"`{result.source}`"),
    ]
    if result.champion_version:
        rows.append(("compared with champion", f"v{result.champion_version}"))
    if result.resource:
        rows.append(("InferenceService", f"`{result.resource}`"))
    rows.append(("smoke test", f"{'passed' if smoke.ok else 'FAILED'}: {smoke.detail}"))
    if smoke.latency_ms is not None:
        rows.append(("smoke-test latency", f"{smoke.latency_ms:.1f} ms (one request, batch 1)"))
    if smoke.output_shape is not None:
        rows.append(("output shape", "x".join(str(d) for d in smoke.output_shape)))
    if smoke.max_abs_diff is not None:
        rows.append(("max abs diff vs ONNX Runtime", f"{smoke.max_abs_diff:.3g} m"))
    if result.rolled_back_to:
        rows.append(("rolled back to", f"`{result.rolled_back_to}`"))
    if result.reason:
        rows.append(("why", result.reason))
    if result.aliases:
        rows.append(("registry aliases", result.aliases))
    lines = [f"# Deploy: {status}", "", "| item | value |", "| --- | --- |"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows]
    for step in result.steps:
        lines += ["", *step_table(step)]
    if result.target == "kserve":
        path = f"/v2/models/{result.model_name}/infer"
        lines += ["", f"Call it: `POST {result.endpoint.rstrip('/')}{path}` (v2 protocol)."]
    return "\n".join(lines) + "\n"


def canary_chart_markdown(result: DeployResult) -> str:
    """The canary analysis per traffic step as one inline chart (Markdown image, base64 PNG):
    p95 latency and error rate of champion and challenger, their disagreement and each one's
    AbsRel against the ground truth. "" without analysed steps. Kept out of
    :func:`write_deploy_report`, which is also printed to the task log."""

    def series(key: str) -> list[tuple[float, float]]:
        points = [(float(s.traffic_percent), s.metrics()[key]) for s in result.steps]
        return [(x, y) for x, y in points if math.isfinite(y)]

    roles = ("champion", "challenger")
    panels = {
        "p95 latency [ms]": {r: series(f"canary_{r}_p95_ms") for r in roles},
        "error rate": {r: series(f"canary_{r}_error_rate") for r in roles},
        "AbsRel": {
            **{f"{r} vs truth": series(f"canary_{r}_abs_rel_vs_truth") for r in roles},
            "disagreement": series("canary_disagreement_abs_rel"),
        },
    }
    if not any(any(v.values()) for v in panels.values()):
        return ""
    chart = bytes_data_uri(step_chart(panels, "challenger traffic [%]"))
    return f"\n## Canary analysis per step\n\n![canary analysis per step]({chart})\n"
