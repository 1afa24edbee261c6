"""depth_common.scaleout.cluster against the Kubernetes API double: submit, wait, logs, fail.

The TrainJob path is the kubeflow SDK's real ``TrainerClient`` over HTTP; the double allows
only what ``manifests/rbac-training`` grants, so these tests also show the Role suffices.
"""

from __future__ import annotations

import pytest
from doubles.trainer_api import TrainingApiDouble, condition
from helpers import scaleout_job

from depth_common.scaleout import cluster, manifests


@pytest.fixture(scope="module")
def job():
    return scaleout_job()


def _posts(kube) -> list[str]:
    return [r.path for r in kube.requests if r.method == "POST"]


def test_pytorchjob_submit_wait_stream_logs(job):
    lines: list[str] = []
    statuses = [
        {},
        condition("Running"),
        condition("Running"),
        condition("Succeeded", "PyTorchJobSucceeded"),
    ]
    with TrainingApiDouble(statuses) as kube:
        launcher = cluster.launcher_for("pytorchjob", job.namespace, kube.api_client())
        state = cluster.run_job(launcher, job, log=lines.append, poll_s=0.01)
    assert state == cluster.JobState("succeeded", "PyTorchJobSucceeded")
    assert _posts(kube) == [f"/apis/kubeflow.org/v1/namespaces/{job.namespace}/pytorchjobs"]
    assert kube.created == [manifests.build_pytorchjob(job)]
    assert "epoch 2/2 train_loss 0.5" in lines  # the master's log reached the task log
    assert lines[0].startswith("submitted pytorchjob")
    logs = [r for r in kube.requests if r.path.endswith("/log")]
    assert logs and all(r.path.endswith(f"/pods/{job.name}-master-0/log") for r in logs)


def test_trainjob_through_trainer_client_end_to_end(job):
    """TrainerClient (Kubernetes backend) resolves the runtime, creates the TrainJob, waits for
    it and follows node-0's log; the wait returns on Complete."""
    lines: list[str] = []
    statuses = [{}, {}, condition("Complete", "JobSetCompleted")]
    with TrainingApiDouble(statuses) as kube:
        launcher = cluster.launcher_for("trainjob", job.namespace, kube.api_client())
        state = cluster.run_job(launcher, job, log=lines.append, poll_s=0.01)
    assert state == cluster.JobState("succeeded", "JobSetCompleted")
    assert _posts(kube) == [
        f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{job.namespace}/trainjobs"
    ]
    (created,) = kube.created
    assert created["metadata"]["name"] == job.name
    paths = {r.path for r in kube.requests}
    assert "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/torch-distributed" in paths
    assert f"/api/v1/namespaces/{job.namespace}/pods/{job.name}-node-0-0-x7k2p/log" in paths
    assert "epoch 2/2 train_loss 0.5" in lines
    assert lines[0].startswith("submitted trainjob")
    assert not [r for r in kube.requests if r.method == "DELETE"]


@pytest.mark.parametrize(
    ("kind", "failed"),
    [
        ("pytorchjob", condition("Failed", "PyTorchJobFailed", "master-0 exited with 1")),
        ("trainjob", condition("Failed", "BackoffLimitExceeded", "node-0-0 exited with 1")),
    ],
)
def test_a_failed_job_fails_with_its_reason(job, kind, failed):
    reason, message = failed["conditions"][0]["reason"], failed["conditions"][0]["message"]
    with TrainingApiDouble([condition("Running"), failed]) as kube:
        launcher = cluster.launcher_for(kind, job.namespace, kube.api_client())
        with pytest.raises(cluster.JobFailed, match=f"{reason}: {message}"):
            cluster.run_job(launcher, job, log=lambda _: None, poll_s=0.01)
    assert not any(r.method == "DELETE" for r in kube.requests)  # kept for post-mortems


@pytest.mark.parametrize(
    ("kind", "plural"),
    [
        ("pytorchjob", "kubeflow.org/v1/namespaces/{ns}/pytorchjobs"),
        ("trainjob", "trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs"),
    ],
)
def test_a_job_past_its_deadline_is_deleted(job, kind, plural):
    lines: list[str] = []
    with TrainingApiDouble([{}], pending_reads=10**6) as kube:  # never starts
        launcher = cluster.launcher_for(kind, job.namespace, kube.api_client())
        name = launcher.submit(job)
        with pytest.raises(TimeoutError, match=r"training.job_timeout_s\); last phase"):
            cluster.wait_for(launcher, name, timeout_s=0.3, poll_s=0.02, log=lines.append)
    deletes = [r.path for r in kube.requests if r.method == "DELETE"]
    assert deletes == [f"/apis/{plural.format(ns=job.namespace)}/{job.name}"]
    assert lines == []  # no log from a pod that never started, no noise about it


def test_an_invalid_object_is_refused_by_the_api_server(job):
    """The double checks creations against the CRD as the API server does (422)."""
    from kubernetes import client

    bad = manifests.build_pytorchjob(job)
    bad["spec"]["nprocPerNode"] = 4  # the CRD wants a string
    with TrainingApiDouble([{}]) as kube:
        api = client.CustomObjectsApi(kube.api_client())
        with pytest.raises(client.ApiException) as err:
            api.create_namespaced_custom_object(
                "kubeflow.org", "v1", job.namespace, "pytorchjobs", bad
            )
    assert err.value.status == 422 and "nprocPerNode" in err.value.body
    assert kube.created == []
