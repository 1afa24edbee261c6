"""The deploy report's canary chart: one inline PNG per report, with every analysed step."""

from __future__ import annotations

import base64
import io
import math

from PIL import Image

from depth_common.deploy.analysis import Check, StepAnalysis, VersionFigures
from depth_common.deploy.report import DeployResult, canary_chart_markdown, write_deploy_report
from depth_common.deploy.smoke import SmokeResult


def _step(percent: int, p95: float) -> StepAnalysis:
    def fig(label: str, ms: float) -> VersionFigures:
        return VersionFigures(label, 8, 0.0, ms / 2, ms, 0.2, None)

    check = Check("latency_ratio", p95 / 10.0, 1.5, True)
    return StepAnalysis(
        percent, fig("champion v1", 10.0), fig("challenger v2", p95), 1.0, 0.05, (check,)
    )


def _result(steps: tuple[StepAnalysis, ...]) -> DeployResult:
    smoke = SmokeResult(True, "ok")
    return DeployResult(
        "local", "http://x", "depth", "2", "/repo", smoke, strategy="canary", steps=steps
    )


def test_canary_chart_is_one_decodable_png_and_stays_out_of_the_log_text() -> None:
    result = _result((_step(10, 11.0), _step(50, 12.0), _step(100, math.nan)))
    chart = canary_chart_markdown(result)
    assert chart.count("data:image/png;base64,") == 1
    data = chart.split("base64,", 1)[1].split(")", 1)[0]
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "PNG" and image.size[0] > 600
    assert "base64" not in write_deploy_report(result)
    assert canary_chart_markdown(_result(())) == ""
