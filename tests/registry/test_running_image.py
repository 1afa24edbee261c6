"""running_image_digest: the digest a task's pod runs, from the pod's status (a CoreV1Api
double), DEPTH_IMAGE_DIGEST, or "" with a warning."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from depth_common.registry import running_image as ri

DIGEST = "sha256:" + "ab" * 32
POD_ENV = {ri.POD_NAME_ENV: "depth-pipeline-x-train-1", ri.POD_NAMESPACE_ENV: "team-a"}


class _CoreV1:
    """read_namespaced_pod answering one pod (or raising), keeping what it was asked."""

    def __init__(self, statuses=None, error: Exception | None = None) -> None:
        self.statuses, self.error, self.asked = statuses, error, []

    def read_namespaced_pod(self, name: str, namespace: str, _request_timeout: float):
        self.asked.append((namespace, name, _request_timeout))
        if self.error:
            raise self.error
        return SimpleNamespace(status=SimpleNamespace(container_statuses=self.statuses))


def _status(name: str, image_id: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, image_id=image_id)


@pytest.mark.parametrize(
    "image_id",
    [f"ghcr.io/depth-mlops/depth-component@{DIGEST}",  # containerd
     f"docker-pullable://ghcr.io/depth-mlops/depth-component@{DIGEST}",  # dockershim
     DIGEST],  # a locally built image: its config digest
)  # fmt: skip
def test_the_main_containers_digest_is_read_from_the_pod(image_id: str) -> None:
    api = _CoreV1(
        [_status("wait", "argoproj/argoexec@sha256:" + "0" * 64), _status("main", image_id)]
    )
    assert ri.running_image_digest(POD_ENV, lambda: api) == DIGEST
    assert api.asked == [("team-a", "depth-pipeline-x-train-1", 10)]


def test_outside_a_pod_nothing_is_asked() -> None:
    def no_api():
        raise AssertionError("no pod to read")

    assert ri.running_image_digest({}, no_api) == ""
    assert ri.running_image_digest({ri.POD_NAME_ENV: "p"}, no_api) == ""  # no namespace


def test_the_environment_wins_and_a_malformed_digest_is_ignored(caplog) -> None:
    def no_api():
        raise AssertionError("the environment answered")

    assert ri.running_image_digest({ri.DIGEST_ENV: DIGEST, **POD_ENV}, no_api) == DIGEST
    with caplog.at_level(logging.WARNING):
        assert ri.running_image_digest({ri.DIGEST_ENV: "latest"}) == ""
    assert "DEPTH_IMAGE_DIGEST='latest' is not sha256" in caplog.text


def test_a_refused_read_is_a_warning_naming_the_pod_not_a_failure(caplog) -> None:
    api = _CoreV1(error=RuntimeError("(403)\nReason: Forbidden"))
    with caplog.at_level(logging.WARNING):
        assert ri.running_image_digest(POD_ENV, lambda: api) == ""
    assert "team-a/depth-pipeline-x-train-1" in caplog.text
    assert "RuntimeError: (403)" in caplog.text and "get on pods" in caplog.text


def test_a_pod_without_the_main_containers_status_has_no_digest(caplog) -> None:
    for statuses in (None, [_status("wait", DIGEST)], [_status("main", "")]):
        with caplog.at_level(logging.WARNING):
            assert ri.running_image_digest(POD_ENV, lambda s=statuses: _CoreV1(s)) == ""
    assert "no 'main' container status" in caplog.text


def test_code_provenance_records_the_pods_digest(monkeypatch) -> None:
    from depth_common.registry import lineage

    monkeypatch.setattr(lineage, "running_image_digest", lambda: DIGEST)
    assert lineage.code_provenance()[lineage.IMAGE_DIGEST] == DIGEST
