"""The evaluation report in headless Chromium: every picture decodes and shows.

Chromium is Debian's ``chromium`` (``make test-deps``: ``tests/system-deps.sh``); without it
the test is skipped, saying so. The page gets a small script appended that, at ``load``,
records each image's alt text and decoded width; ``--dump-dom`` prints the DOM after it ran.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from depth_common.evaluation.analysis import ErrorAnalysis
from depth_common.evaluation.report import report_html

_PROBE = """<script>
window.addEventListener('load', () => {
  const seen = [...document.images].map(i => [i.alt, i.complete ? i.naturalWidth : 0]);
  document.body.setAttribute('data-images', JSON.stringify(seen));
});
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed: run `make test-deps` as root (Debian's chromium)")
    return found


def _page() -> str:
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(2):
        image = rng.normal(size=(3, 16, 32)).astype(np.float32)
        gt = rng.uniform(1.0, 70.0, size=(16, 32)).astype(np.float32)
        gt[:2] = 0.0  # no ground truth: grey in every map
        samples.append((image, gt, gt * rng.uniform(0.8, 1.2, size=gt.shape).astype(np.float32)))
    analysis = ErrorAnalysis(min_depth=1e-3, max_depth=80.0)
    for _, gt, pred in samples:
        analysis.update(pred, gt)
    curves = {
        "train_loss": [(1, 1.0), (2, 0.6), (3, 0.5)],
        "val_rmse": [(1, 9.0), (2, 8.0), (3, 7.5)],
        "learning_rate": [(1, 1e-4), (2, 5e-5), (3, 1e-5)],
    }
    return report_html(
        {"test_rmse": 7.5, "test_abs_rel": 0.2}, samples, "Depth evaluation: test",
        {"data": "synthetic"}, 80.0, "full resolution", analysis=analysis, curves=curves,
    )  # fmt: skip


def _run_chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}", *args,
        ],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


def test_every_picture_of_the_report_loads_in_chromium(tmp_path: Path) -> None:
    page = _page()
    assert "http" not in re.sub(r'src="data:[^"]+"', "", page)  # self-contained: nothing fetched
    path = tmp_path / "report.html"
    path.write_text(page.replace("</body>", _PROBE + "</body>"))
    dom = _run_chromium(["--dump-dom", path.as_uri()], tmp_path).stdout
    found = re.search(r"data-images=\"([^\"]*)\"", dom)
    assert found, dom[-2000:]
    images = json.loads(found.group(1).replace("&quot;", '"'))
    alts = [alt for alt, _ in images]
    # 2 colour bars, 4 pictures per sample, the band chart, the density plot, the curves.
    assert len(images) == 2 + 4 * 2 + 3, alts
    assert all(width > 0 for _, width in images), images
    assert {"sample 1 error", "error by distance band chart", "density plot"} <= set(alts)
    assert {"training curves"} <= set(alts)

    shot = tmp_path / "report.png"
    _run_chromium(["--window-size=1280,2400", f"--screenshot={shot}", path.as_uri()], tmp_path)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 200  # charts and colour maps, not a blank page
