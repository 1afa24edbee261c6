"""The deploy step for real on the local target: MLflow registry (SQLite) + the bundled Triton.

First deploy (nothing served): replace and crown. A challenger whose ONNX output is scaled by
2 runs as a second version beside the champion in one Triton, fails the analysis and is rolled
back (the served repository untouched, aliases unchanged). A sound challenger is promoted over
two analysed steps (the repository then holds only it; champion/previous move). Then the CLI's
``status`` and ``rollback`` use the same code to restore the previous champion; two rollbacks
at once leave the registry equal to what serves. A challenger superseded while its deploy
waited for the serving lease is not served.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from pathlib import Path

import pytest
import torch
from doubles.serving_target import RecordingTarget

from depth_common.atomic import MARKER
from depth_common.cli.parser import main
from depth_common.config import Params
from depth_common.data.synthetic import probe_scenes
from depth_common.deploy.local import install_repository, latest_version
from depth_common.deploy.probe import ProbeSet
from depth_common.deploy.report import DeployResult
from depth_common.deploy.rollback import rollback
from depth_common.deploy.rollout import deploy_model, serving_target
from depth_common.deploy.target import Release
from depth_common.errors import DeployError
from depth_common.export.onnx import export_model
from depth_common.export.triton import build_triton_repository
from depth_common.registry.aliases import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    PREVIOUS_ALIAS,
    SOURCE_TAG,
    aliases,
    registry_client,
)
from depth_common.registry.promotion import crown_challenger, register_model
from depth_common.registry.registry import Registry

H, W = 32, 64
_names = itertools.count()


class Scaled(torch.nn.Module):
    """The same depth net with its output multiplied by ``factor`` (2.0: a broken export)."""

    def __init__(self, net: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.net, self.factor = net, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.factor


def _onnx(root: Path, name: str, factor: float) -> Path:
    from helpers import TinyDepthNet

    torch.manual_seed(0)  # the same weights every time: only the factor differs
    return export_model(Scaled(TinyDepthNet(), factor), root / f"{name}.onnx", img_size=(H, W)).path


def _run(rmse: float) -> str:
    import mlflow

    with mlflow.start_run() as run:
        mlflow.log_metrics({"test_rmse": rmse, "test_abs_rel": rmse / 10})
        mlflow.pytorch.log_model(
            torch.nn.Linear(2, 1), name="model", pip_requirements=["torch"],
            input_example=torch.zeros(1, 2).numpy(),
        )  # fmt: skip
    return run.info.run_id


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MARKER  # the project's marker, not the served model
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    import mlflow

    from depth_common.registry.store import ensure_sqlite_store

    root = tmp_path_factory.mktemp("rollout")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ensure_sqlite_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("rollout-tests")
    onnx = {k: _onnx(root, k, f) for k, f in (("v1", 1.0), ("broken", 2.0), ("good", 1.02))}
    yield root, uri, onnx
    mlflow.set_tracking_uri(None)


def _overrides(root: Path, uri: str, model: str) -> list[str]:
    # Latency of a 32x64 toy model is ~1 ms, all noise on a shared 2-core machine: the
    # latency bound is loosened here so that only the disagreement decides these tests.
    return [
        f"mlflow.tracking_uri={uri}",
        f"mlflow.model_name={model}",
        f"export.repository_dir='{root / model / 'serve'}'",
        "deploy.target=local",
        "deploy.strategy=canary",
        "deploy.canary_steps=[10, 50, 100]",
        "deploy.probe_images=6",
        "deploy.max_latency_ratio=20",
    ]


def _deploy_with(
    params: Params, version: int, run: str, onnx: Path, source: str, **target_kw
) -> DeployResult:
    """What the deploy component does: render the probes, build the target, deploy."""
    probes = ProbeSet(*probe_scenes((H, W), params.deploy.probe_images))
    target = serving_target(params, image=probes.images[0], **target_kw)
    return deploy_model(params, target, Release(version, source, run, onnx), probes=probes)


def _deploy(params: Params, root: Path, onnx: Path, rmse: float, name: str):
    run = _run(rmse)
    reg = register_model(run, params)
    assert reg.promoted, reg.reason
    repo = build_triton_repository(
        onnx, root / params.mlflow.model_name / name, version=reg.version
    )
    return run, reg.version, _deploy_with(params, reg.version, run, onnx, str(repo.resolve()))


@pytest.mark.slow
def test_local_canary_rolls_back_a_broken_challenger_then_promotes_a_sound_one(world, capsys):
    root, uri, onnx = world
    sets = _overrides(root, uri, f"Depth{next(_names)}")
    params = Params().with_overrides(sets)
    name, serve = params.mlflow.model_name, Path(params.export.repository_dir)
    client = registry_client(uri)

    _, v1, first = _deploy(params, root, onnx["v1"], 3.0, "repo-v1")
    assert (first.outcome, first.strategy, first.reason.split(";")[0]) == (
        "replaced", "replace", "nothing served yet",
    )  # fmt: skip
    assert first.smoke.ok and aliases(client, name) == {CHAMPION_ALIAS: v1}
    served_v1 = _digest(serve)
    assert sorted(served_v1) == ["depth/1/model.onnx", "depth/config.pbtxt"]

    run2, v2, broken = _deploy(params, root, onnx["broken"], 2.0, "repo-v2")
    assert broken.outcome == "rolled back" and broken.strategy == "canary"
    assert broken.champion_version == "1" and "analysis failed at 10 %" in broken.reason
    (step,) = broken.steps  # rolled back at the first step
    assert step.disagreement == pytest.approx(1.0, abs=1e-4)  # 2x the champion's depth
    assert step.challenger.error_rate == 0.0 and step.champion.error_rate == 0.0
    assert step.challenger.requests == 6
    assert _digest(serve) == served_v1  # the champion's repository, untouched
    assert aliases(client, name) == {CHAMPION_ALIAS: v1}  # challenger withdrawn
    logged = client.get_metric_history(run2, "canary_disagreement_abs_rel")
    assert [(m.step, round(m.value, 3)) for m in logged] == [(10, 1.0)]
    assert client.get_run(run2).data.tags["deploy.outcome"] == "rolled back"

    run3, v3, good = _deploy(params, root, onnx["good"], 1.5, "repo-v3")
    assert good.outcome == "promoted", good.reason
    assert [s.traffic_percent for s in good.steps] == [10, 50]
    for s in good.steps:  # 1.02x: a 2 % disagreement, well inside the bound
        assert s.passed and s.disagreement == pytest.approx(0.02, abs=2e-3)
    assert good.smoke.ok and good.smoke.max_abs_diff <= 1e-3  # challenger vs ONNX Runtime
    assert sorted(_digest(serve)) == [f"depth/{v3}/model.onnx", "depth/config.pbtxt"]
    assert aliases(client, name) == {CHAMPION_ALIAS: v3, PREVIOUS_ALIAS: v1}
    assert good.aliases == f"champion v{v3}, previous v{v1}"
    source = client.get_model_version(name, str(v3)).tags[SOURCE_TAG]
    assert source == str((root / name / "repo-v3").resolve())
    report = client.download_artifacts(run3, "deploy/report.md")
    assert Path(report).read_text().count("### Canary step:") == 2

    args = [a for s in sets for a in ("--set", s)]
    assert main(["status", *args]) == 0
    out = capsys.readouterr().out
    assert f"serves depth version(s) {v3}" in out and f"champion   v{v3}  run {run3}" in out
    assert main(["rollback", *args]) == 0
    out = capsys.readouterr().out
    assert f"version {v3} replaced by the previous champion v{v1}" in out
    assert _digest(serve) == served_v1  # v1's repository served again, smoke-tested
    assert aliases(client, name) == {CHAMPION_ALIAS: v1}
    assert CHALLENGER_ALIAS not in aliases(client, name)
    assert main(["rollback", *args]) == 1  # nothing further back
    assert "no 'previous' version" in capsys.readouterr().err


@pytest.mark.slow
def test_a_superseded_challenger_is_not_deployed(world):
    root, uri, onnx = world
    params = Params().with_overrides(_overrides(root, uri, f"Depth{next(_names)}"))
    _deploy(params, root, onnx["v1"], 3.0, "repo-v1")
    slow, fast = _run(2.0), _run(1.0)
    late = register_model(slow, params)
    assert register_model(fast, params).promoted  # better: takes the challenger alias
    repo = build_triton_repository(onnx["good"], root / "late", version=late.version)
    before = _digest(Path(params.export.repository_dir))
    result = _deploy_with(params, late.version, slow, onnx["good"], str(repo.resolve()))
    assert result.outcome == "superseded" and "no longer the challenger" in result.reason
    assert _digest(Path(params.export.repository_dir)) == before


@pytest.mark.slow
def test_kserve_canary_end_to_end_against_the_api_double_and_real_servers(world):
    """deploy_model on target kserve: the API double plays the cluster, each revision's tagged
    URL is a real local Triton serving that revision's model."""
    from doubles.kubernetes_api import KServeApiDouble, isvc_validator

    from depth_common.deploy.kserve import MLFLOW_RUN_ANNOTATION, MLFLOW_VERSION_ANNOTATION
    from depth_common.deploy.kserve_canary import traffic_split
    from depth_common.serving.server import LocalTritonServer

    root, uri, onnx = world
    name = f"Depth{next(_names)}"
    params = Params().with_overrides(
        [*_overrides(root, uri, name), "deploy.target=kserve", "cluster.namespace=team-a",
         "deploy.timeout_s=20"]
    )  # fmt: skip
    client = registry_client(uri)
    repos = {k: build_triton_repository(onnx[k], root / name / k, version=i + 1)
             for i, k in enumerate(("v1", "broken", "good"))}  # fmt: skip
    uris = {k: f"s3://models/{name}/{k}" for k in repos}
    with (
        LocalTritonServer(repos["v1"]) as s1,
        LocalTritonServer(repos["broken"]) as s2,
        LocalTritonServer(repos["good"]) as s3,
    ):
        urls = {"v1": s1, "broken": s2, "good": s3}
        endpoints = {uris[k]: f"http://{s.http_url}" for k, s in urls.items()}
        with KServeApiDouble(url=f"http://{s1.http_url}", endpoints=endpoints) as k8s:
            outcomes = {}
            for key, rmse in (("v1", 3.0), ("broken", 2.0), ("good", 1.5)):
                run = _run(rmse)
                reg = register_model(run, params)
                k8s.url = k8s.controller.url = endpoints[uris[key]]  # the top-level address
                result = _deploy_with(
                    params, reg.version, run, onnx[key], uris[key], api=k8s.api(), poll_s=0.01
                )
                outcomes[key] = (result.outcome, run, reg.version)
                for obj in k8s.snapshots:
                    isvc_validator().validate(obj)
            live = k8s.get("team-a", "depth")
            isvc_validator().validate(live)
    assert [o for o, _, _ in outcomes.values()] == ["replaced", "rolled back", "promoted"]
    assert live["spec"]["predictor"]["model"]["storageUri"] == uris["good"]
    assert "canaryTrafficPercent" not in live["spec"]["predictor"]
    ann = live["metadata"]["annotations"]
    assert (
        ann[MLFLOW_VERSION_ANNOTATION] == "3" and ann[MLFLOW_RUN_ANNOTATION] == outcomes["good"][1]
    )
    assert traffic_split(live)["latest"]["percent"] == 100
    assert aliases(client, name) == {CHAMPION_ALIAS: 3, PREVIOUS_ALIAS: 1}
    # Created (no patch); broken: 10 %, then the champion restored pinned at 0 %, canary
    # removed; good: 10 %, 50 %, promoted (canary removed).
    steps = [s["spec"]["predictor"].get("canaryTrafficPercent", "-") for s in k8s.snapshots]
    assert steps == [10, 0, "-", 10, 50, "-"]


@pytest.mark.slow
def test_two_rollbacks_at_once_leave_the_registry_equal_to_what_serves(world):
    """Champion v3, previous v2 (which replaced v1); two rollbacks started together: they run
    one after the other, the second one step further back, and what serves is the champion."""
    root, uri, onnx = world
    params = Params().with_overrides(_overrides(root, uri, f"Depth{next(_names)}"))
    name, serve = params.mlflow.model_name, Path(params.export.repository_dir)
    registry = Registry.from_params(params)
    for key, rmse in (("v1", 3.0), ("good", 2.0), ("broken", 1.0)):
        reg = register_model(_run(rmse), params, registry=registry)
        repo = build_triton_repository(onnx[key], root / name / key, version=reg.version)
        registry.record_source(reg.version, str(repo.resolve()))
        assert crown_challenger(params, reg.version, registry=registry)[0]
    install_repository(repo, serve)  # v3 serves, as its deploy left it
    assert registry.aliases() == {CHAMPION_ALIAS: 3, PREVIOUS_ALIAS: 2}

    results: list[DeployResult] = []
    errors: list[DeployError] = []

    def one_rollback() -> None:  # a `rollback` command: its own registry client and target
        try:
            results.append(rollback(Registry.from_params(params), serving_target(params)))
        except DeployError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one_rollback) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    served, final = latest_version(serve, "depth"), registry.aliases()
    assert final.get(CHAMPION_ALIAS) == served  # the registry follows what serves
    assert (served, final) == (1, {CHAMPION_ALIAS: 1})  # the second went one step further
    assert [r.model_version for r in results] == ["2", "1"]
    assert [r.aliases for r in results] == ["champion v2, previous v1", "champion v1"]


def test_a_challenger_superseded_while_waiting_for_the_lease_is_not_served(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = Params().with_overrides([f"mlflow.tracking_uri={uri}", "mlflow.model_name=Depth"])
    registry = Registry.from_params(params)
    registry.client.create_registered_model("Depth")
    for v in (1, 2):
        registry.client.create_model_version("Depth", f"file:///models/v{v}")
    registry.set_challenger(1)
    # A better run registers version 2 while this deploy waits for the lease.
    target = RecordingTarget(on_lease=lambda: registry.set_challenger(2))
    result = deploy_model(params, target, Release(1, "/srv/repo-v1"), registry=registry)
    assert (result.outcome, target.served, target.leases) == ("superseded", [], 1)
    assert "version 1 is no longer the challenger (challenger v2)" in result.reason
    assert registry.aliases() == {CHALLENGER_ALIAS: 2}
