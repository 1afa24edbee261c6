"""The canary state machine on KServe, through the real Kubernetes client talking to the recorded
InferenceService API double: steps, Ready waits, promotion, rollbacks, API errors mid-rollout,
and every object the API server would store validated against the vendored CRD."""

from __future__ import annotations

import pytest
from doubles.kserve_controller import TAG_ROUTING
from doubles.kubernetes_api import KServeApiDouble, isvc_validator

from depth_common.config import DeployConfig
from depth_common.deploy.analysis import Thresholds, VersionSample, analyse
from depth_common.deploy.canary import run_canary
from depth_common.deploy.kserve import (
    MLFLOW_RUN_ANNOTATION,
    MLFLOW_VERSION_ANNOTATION,
    model_annotations,
)
from depth_common.deploy.kserve_canary import KServeCanary, served_model, traffic_split
from depth_common.deploy.manifests import build_inferenceservice
from depth_common.deploy.smoke import SmokeResult
from depth_common.errors import CanaryError, DeployTimeout

NS, NAME = "team-a", "depth"
OLD, NEW = "s3://models/depth/v1/triton_repository", "s3://models/depth/v2/triton_repository"
CHAMP_URL, CHALL_URL = "http://champion.test:8080", "http://challenger.test:8080"
CFG = DeployConfig(name=NAME, timeout_s=5)
STEPS = (10, 50, 100)


def _isvc(uri: str, version: int, run: str) -> dict:
    isvc = build_inferenceservice(
        "cpu", name=NAME, namespace=NS, storage_uri=uri, model_version=version
    )
    isvc["metadata"].setdefault("annotations", {}).update(
        model_annotations("ViT+Decoder", version, run)
    )
    return isvc


def _double(**kw) -> KServeApiDouble:
    return KServeApiDouble(endpoints={OLD: CHAMP_URL, NEW: CHALL_URL}, **kw)


def _target(k8s: KServeApiDouble, smoke_ok: bool = True) -> KServeCanary:
    k8s.seed(_isvc(OLD, 1, "run-1"))
    champion = served_model(k8s.get(NS, NAME))
    assert champion is not None and champion.model_version == "1"

    def smoke(url, model_name, **kw):
        assert url == CHALL_URL  # the challenger revision, on its own tagged URL
        return SmokeResult(smoke_ok, "scripted smoke test")

    return KServeCanary(
        k8s.api(), CFG, _isvc(NEW, 2, "run-2"), champion, namespace=NS, model_name="depth",
        challenger_label="v2", poll_s=0.01, smoke_test=smoke,
    )  # fmt: skip


class ScriptedAnalysis:
    """Passes or fails each step as scripted; records what it saw on the API at that moment."""

    def __init__(self, k8s: KServeApiDouble, verdicts: dict[int, bool]) -> None:
        self.k8s, self.verdicts = k8s, verdicts
        self.seen: list[tuple[int, str, str, dict]] = []

    def __call__(self, champion, challenger, percent):
        live = self.k8s.get(NS, NAME)
        isvc_validator().validate(live)  # the status we act on has the CRD's shape
        self.seen.append((percent, champion.url, challenger.url, traffic_split(live)))
        ok = self.verdicts.get(percent, True)
        depth = [pytest.importorskip("numpy").ones((2, 2), "float32")]
        chall = depth if ok else [2 * d for d in depth]
        return analyse(
            VersionSample("champion v1", tuple(depth), (1.0,), ()),
            VersionSample("challenger v2", tuple(chall), (1.0,), ()),
            depth, Thresholds(0.0, 1.5, 0.3), percent,
        )  # fmt: skip


def _canary_values(k8s: KServeApiDouble) -> list:
    return [s["spec"]["predictor"].get("canaryTrafficPercent", "unset") for s in k8s.snapshots]


def _revision_uri(k8s: KServeApiDouble, revision: str) -> str:
    live = k8s.objects[(NS, NAME)]
    return next(r.storage_uri for r in live.revisions if r.name == revision)


def _challenger_share(k8s: KServeApiDouble) -> list[int]:
    """Per GET: the percentage of traffic the status routed to a revision serving NEW."""
    shares = []
    for view in k8s.views:
        split = traffic_split(view)
        shares.append(
            sum(
                e["percent"] for e in split.values() if _revision_uri(k8s, e["revisionName"]) == NEW
            )
        )
    return shares


def test_analysis_passing_at_each_step_promotes_to_100_percent() -> None:
    with _double(stale_polls=2) as k8s:
        target = _target(k8s)
        check = ScriptedAnalysis(k8s, {})
        outcome = run_canary(target, STEPS, check)
        assert outcome.promoted and [s.traffic_percent for s in outcome.steps] == [10, 50]
        assert _canary_values(k8s) == [10, 50, "unset"]
        for obj in k8s.snapshots:  # every stored object is a valid InferenceService
            isvc_validator().validate(obj)
        for percent, champ_url, chall_url, split in check.seen:
            assert (champ_url, chall_url) == (CHAMP_URL, CHALL_URL)
            assert split["latest"]["percent"] == percent and split["latest"]["tag"] == "latest"
            assert split["prev"]["percent"] == 100 - percent
            assert _revision_uri(k8s, split["latest"]["revisionName"]) == NEW
            assert _revision_uri(k8s, split["prev"]["revisionName"]) == OLD
        live = k8s.get(NS, NAME)
        isvc_validator().validate(live)
        assert "canaryTrafficPercent" not in live["spec"]["predictor"]
        assert live["spec"]["predictor"]["model"]["storageUri"] == NEW
        ann = live["metadata"]["annotations"]
        assert (ann[MLFLOW_VERSION_ANNOTATION], ann[MLFLOW_RUN_ANNOTATION]) == ("2", "run-2")
        assert ann[TAG_ROUTING] == "true"
        split = traffic_split(live)
        assert list(split) == ["latest"] and split["latest"]["percent"] == 100
        pred = live["status"]["components"]["predictor"]
        assert (
            pred["latestRolledoutRevision"]
            == pred["latestCreatedRevision"]
            == "depth-predictor-00002"
        )
        # Ready waits looked at the new generation only: never a step at a stale status.
        assert max(_challenger_share(k8s)) == 100 and _challenger_share(k8s)[-1] == 100


def test_failed_analysis_rolls_back_and_traffic_never_leaves_the_champion_model() -> None:
    with _double() as k8s:
        target = _target(k8s)
        outcome = run_canary(target, STEPS, ScriptedAnalysis(k8s, {50: False}))
        assert not outcome.promoted and "analysis failed at 50 %" in outcome.reason
        assert "disagreement" in outcome.reason and outcome.reason.endswith("rolled back")
        # begin 10, shift 50, restore the champion with the canary pinned at 0, remove it.
        assert _canary_values(k8s) == [10, 50, 0, "unset"]
        restore = k8s.patches()[2].body
        assert restore["spec"]["predictor"]["model"]["storageUri"] == OLD
        assert restore["metadata"]["annotations"][MLFLOW_VERSION_ANNOTATION] == "1"
        for obj in k8s.snapshots:
            isvc_validator().validate(obj)
        assert max(_challenger_share(k8s)) == 50  # the challenger never got more than its step
        live = k8s.get(NS, NAME)
        assert live["spec"]["predictor"]["model"]["storageUri"] == OLD
        assert "canaryTrafficPercent" not in live["spec"]["predictor"]
        latest = traffic_split(live)["latest"]
        assert latest["percent"] == 100 and _revision_uri(k8s, latest["revisionName"]) == OLD
        assert live["metadata"]["annotations"][MLFLOW_RUN_ANNOTATION] == "run-1"


def test_api_error_mid_rollout_rolls_back_with_a_clear_error() -> None:
    # The 2nd PATCH (the step up to 50 %) gets an HTTP 500, as from an API server restarting.
    with _double(fail_patches={2: 500}) as k8s:
        target = _target(k8s)
        with pytest.raises(CanaryError) as info:
            run_canary(target, STEPS, ScriptedAnalysis(k8s, {}))
        msg = str(info.value)
        assert msg == (
            "canary failed (API error HTTP 500 Internal Server Error: injected failure); "
            "rolled back to the champion"
        )
        assert [s.traffic_percent for s in info.value.outcome.steps] == [10]
        live = k8s.get(NS, NAME)
        assert live["spec"]["predictor"]["model"]["storageUri"] == OLD
        assert "canaryTrafficPercent" not in live["spec"]["predictor"]
        assert traffic_split(live)["latest"]["percent"] == 100


def test_rollback_that_fails_too_says_both() -> None:
    with _double(fail_patches={2: 500, 3: 503}) as k8s:
        target = _target(k8s)
        with pytest.raises(
            CanaryError, match=r"HTTP 500 .* and the rollback failed: API error HTTP 503"
        ):
            run_canary(target, STEPS, ScriptedAnalysis(k8s, {}))


@pytest.mark.parametrize(
    ("outcome", "cause"), [("never-ready", DeployTimeout), ("load-failed", None)]
)
def test_a_challenger_that_never_serves_is_rolled_back(outcome, cause) -> None:
    cfg = DeployConfig(name=NAME, timeout_s=1)
    with _double(outcomes={NEW: outcome}) as k8s:
        target = _target(k8s)
        target.cfg = cfg
        with pytest.raises(CanaryError) as info:
            run_canary(target, STEPS, ScriptedAnalysis(k8s, {}))
        assert not info.value.outcome.steps  # no analysis of a revision that is not there
        msg = str(info.value)
        assert ("not Ready after 1 s" in msg) if cause else ("ModelLoadFailed" in msg)
        live = k8s.get(NS, NAME)
        assert live["spec"]["predictor"]["model"]["storageUri"] == OLD
        latest = traffic_split(live)["latest"]
        assert latest["percent"] == 100 and _revision_uri(k8s, latest["revisionName"]) == OLD


def test_failing_smoke_test_of_the_challenger_rolls_back() -> None:
    with _double() as k8s:
        target = _target(k8s, smoke_ok=False)
        with pytest.raises(CanaryError, match="smoke test of the challenger at http://challenger"):
            run_canary(target, STEPS, ScriptedAnalysis(k8s, {}))
        assert k8s.get(NS, NAME)["spec"]["predictor"]["model"]["storageUri"] == OLD


def test_superseded_challenger_stops_before_the_next_step() -> None:
    with _double() as k8s:
        target = _target(k8s)
        asked = iter([None, "version 3 superseded it"])
        outcome = run_canary(target, STEPS, ScriptedAnalysis(k8s, {}), lambda: next(asked))
        assert not outcome.promoted and outcome.reason.startswith("version 3 superseded it")
        assert _canary_values(k8s) == [10, 0, "unset"]
        assert k8s.get(NS, NAME)["spec"]["predictor"]["model"]["storageUri"] == OLD


def test_the_manifests_merge_patch_follows_rfc7386_and_leaves_its_inputs_alone() -> None:
    """RFC 7386 appendix A cases: depth_common's merge_patch (json-merge-patch on copies) and the
    library itself give the RFC's results, and the manifest being patched is not changed."""
    import copy

    import json_merge_patch

    from depth_common.deploy.manifests import merge_patch

    cases = [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ]
    for target, patch, expected in cases:
        before = copy.deepcopy((target, patch))
        assert merge_patch(target, patch) == expected
        assert (target, patch) == before  # the library merges in place: ours works on copies
        assert json_merge_patch.merge(copy.deepcopy(target), copy.deepcopy(patch)) == expected
