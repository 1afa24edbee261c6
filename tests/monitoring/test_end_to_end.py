"""The loop closed, here: pipeline → serve with payload logging → monitor (``--trigger local``)
→ in-distribution traffic (quiet) → darkened traffic (drift) → a retraining run starts, and
its challenger goes through the canary.

Tiny demo configuration (vit_tiny from random weights, 32 x 64, 8 images per split). The first
run trains no epoch (no champion yet: it is promoted and served, a weak model); the retraining
run trains three, so it beats the champion and its deploy is a canary on the local target. The
monitor is the real command line in a subprocess; its reference is the profile the pipeline
logged, found through the served version's ``reference_profile_uri`` tag.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_SYNTHETIC, tiny_pipeline_overrides

from depth_common.monitoring.reference import PROFILE_TAG
from depth_common.serving.client import DepthClient
from depth_common.serving.codec import load_rgb
from depth_common.serving.local_stack import LocalTransformer
from depth_common.serving.server import LocalTritonServer, free_port
from pipelines.depth_pipeline import PARAMS_FILE
from pipelines.run_local import artifact_metadata, run_local

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WINDOW = 8


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - 127.0.0.1
        return json.loads(resp.read())


def wait_for(what: str, check, timeout_s: float, monitor: subprocess.Popen) -> dict:
    deadline = time.monotonic() + timeout_s
    last: dict = {}
    while time.monotonic() < deadline:
        assert monitor.poll() is None, f"the monitor exited ({monitor.returncode})"
        try:
            last = check()
        except OSError:
            last = {}
        if last.get("ok"):
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not after {timeout_s} s; last {last}")


def reference_of_champion(tmp_path: Path, tracking_uri: str) -> Path:
    import mlflow
    from mlflow import MlflowClient

    champion = MlflowClient(tracking_uri).get_model_version_by_alias("ViT+Decoder", "champion")
    uri = champion.tags[PROFILE_TAG]
    mlflow.set_tracking_uri(tracking_uri)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path)))


def start_monitor(tmp_path: Path, reference: Path, raw: str, port: int) -> subprocess.Popen:
    retrain = ["--params", str(PARAMS_FILE), "--data-uri", raw, "--root", str(tmp_path / "re")]
    for setting in tiny_pipeline_overrides(tmp_path, "training.epochs=3"):
        retrain += ["--set", setting]
    command = [
        sys.executable, "-m", "depth_common", "monitor", "--reference", str(reference),
        "--port", str(port), "--window", str(WINDOW), "--trigger", "local",
        "--consecutive", "2", "--cooldown-s", "3600", "--local-args", shlex.join(retrain),
        "--log-dir", str(tmp_path / "monitor"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "monitor.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_drift_starts_a_retraining_run_whose_challenger_goes_through_the_canary(tmp_path):
    first = run_local(
        PARAMS_FILE,
        tiny_pipeline_overrides(tmp_path, "training.epochs=0", "training.init_from=''"),
        data_uri="synthetic",
        synthetic=TINY_SYNTHETIC,
        root=tmp_path / "runs",
    )
    assert first.ok and first.decision and first.decision[0], first.stages
    assert artifact_metadata(first.tasks["profile-data"], "reference")["images"] == 8
    reference = reference_of_champion(tmp_path, first.params.mlflow.tracking_uri)
    raw = first.tasks["synthesize"]["artifacts"]["raw"]["artifacts"][0]["uri"]
    train = sorted((Path(raw) / "leftImg8bit" / "train").rglob("*.png"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    monitor = start_monitor(tmp_path, reference, raw, port)
    try:
        wait_for("monitor up", lambda: {"ok": get_json(url + "/healthz")["ok"]}, 60, monitor)
        with (
            LocalTritonServer(tmp_path / "serving", log_path=tmp_path / "triton.log") as triton,
            LocalTransformer(triton.grpc_url, logger_url=url + "/") as transformer,
        ):
            client = DepthClient(transformer.url, mode="image")

            def seen(n: int):
                return lambda: {**(s := get_json(url + "/drift")), "ok": s["images_seen"] >= n}

            for path in train * 2:  # two windows of the training images themselves
                client.predict(path.read_bytes())
            quiet = wait_for("quiet windows logged", seen(2 * WINDOW), 60, monitor)
            assert quiet["ready"] and quiet["drift"] is False and quiet["runs"] == []
            assert quiet["outputs"]["responses"] == 2 * WINDOW
            for path in train * 2:  # the same scenes at dusk: x 0.35
                client.predict((load_rgb(path) * 0.35).astype(np.uint8))
            drifted = wait_for("drifted windows logged", seen(4 * WINDOW), 60, monitor)
            client.close()
        assert drifted["drift"] is True and drifted["score"] < drifted["threshold"]
        (run,) = drifted["runs"]
        assert run["trigger"] == "local" and run["status"] in ("running", "succeeded")

        def finished():
            (r,) = get_json(url + "/drift")["runs"]
            return {**r, "ok": r["status"] != "running"}

        done = wait_for("the retraining run", finished, 1500, monitor)
        logs = [p.read_text()[-3000:] for p in (tmp_path / "monitor").glob("*.log")]
        assert done["status"] == "succeeded", logs
    finally:
        monitor.terminate()
        monitor.wait(30)
    outputs = {}
    for f in (tmp_path / "re").rglob("executor_output.json"):
        outputs[f.parent.name] = json.loads(f.read_text())
    decide = next(v for k, v in outputs.items() if k.startswith("decide"))
    assert decide["parameterValues"]["promote"] is True, decide
    deploy = next(v for k, v in outputs.items() if k.startswith("deploy"))
    report = artifact_metadata(deploy, "report")
    assert report["strategy"] == "canary" and report["outcome"] in ("promoted", "rolled back")
