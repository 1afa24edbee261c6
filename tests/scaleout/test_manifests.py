"""depth_common.scaleout: the job description from params, both operators' objects, CRD checks."""

from __future__ import annotations

import copy

import pytest
from doubles.trainer_api import TrainingApiDouble
from helpers import scaleout_job

from depth_common.errors import ConfigError
from depth_common.scaleout import cluster, crd, manifests


@pytest.fixture(scope="module")
def job():
    return scaleout_job()


def created_trainjob(job) -> dict:
    """The TrainJob that ``TrainerClient.train`` creates for ``job`` (the API double records it)."""
    with TrainingApiDouble([{}]) as kube:
        name = cluster.TrainJobs(job.namespace, kube.api_client()).submit(job)
    assert name == job.name
    (post,) = [r for r in kube.requests if r.method == "POST"]
    assert post.path == f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{job.namespace}/trainjobs"
    (obj,) = kube.created
    return obj


@pytest.fixture(scope="module")
def trainjob(job):
    return created_trainjob(job)


def test_job_from_params_maps_every_setting(job):
    assert job.namespace == "kubeflow-user-example-com"
    assert job.image == "ghcr.io/depth-mlops/depth-component:0.1.0-cuda"  # GPUs: the CUDA tag
    assert job.command[:3] == ("torchrun", "--nnodes=2", "--nproc-per-node=4")
    assert job.command[3:6] == ("-m", "depth_common", "train")
    assert job.node_selector == (("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),)
    assert job.tolerations == (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"},
    )
    assert ("MLFLOW_TRACKING_PASSWORD", "mlflow-credentials", "MLFLOW_TRACKING_PASSWORD") in (
        job.secret_env
    )
    assert ("AWS_SECRET_ACCESS_KEY", "s3-credentials", "AWS_SECRET_ACCESS_KEY") in job.secret_env
    assert job.timeout_s == 7200
    cpu = scaleout_job(["training.num_nodes=2"])
    assert cpu.image.endswith(":0.1.0") and cpu.gpus_per_node == 0 and cpu.secret_env == ()
    assert ("OMP_NUM_THREADS", "1") in cpu.env


@pytest.mark.parametrize(
    ("overrides", "kw", "needle"),
    [
        (["training.train_gpu=1", "training.procs_per_node=2"], {}, "training.procs_per_node"),
        (['cluster.tolerations=["gpu:Sometimes"]'], {}, r"cluster.tolerations\[0\]"),
        (['cluster.tolerations=["=x:NoSchedule"]'], {}, r"cluster.tolerations\[0\]"),
        ([], {"name": "Depth_Train"}, "job name: got 'Depth_Train'"),
    ],
)
def test_bad_settings_are_named(overrides, kw, needle):
    with pytest.raises(ConfigError, match=needle):
        scaleout_job(overrides, **kw)


def test_trainjob_object(job, trainjob):
    obj = trainjob
    assert obj["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and obj["kind"] == "TrainJob"
    assert obj["metadata"]["name"] == job.name
    assert obj["metadata"]["labels"] == {
        "app.kubernetes.io/part-of": "depth-mlops",
        "depth-mlops/step": "train",
    }
    spec = obj["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "kind": "ClusterTrainingRuntime"}
    assert spec["activeDeadlineSeconds"] == 7200  # as the PyTorchJob's runPolicy
    assert spec["trainer"]["numNodes"] == 2
    assert spec["trainer"]["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": 4}
    assert spec["trainer"]["command"] == list(job.command)
    assert spec["trainer"]["image"] == job.image
    assert {"name": "PYTHONUNBUFFERED", "value": "1"} in spec["trainer"]["env"]
    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == "trainer.kubeflow.org/kubeflow-sdk"
    rjob = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rjob[0]["name"] == "node"
    pod = rjob[0]["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [dict(t) for t in job.tolerations]
    assert pod["serviceAccountName"] == "depth-pipeline"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]}
    assert secret_refs["MLFLOW_TRACKING_TOKEN"] == "mlflow-credentials"
    assert all("value" not in e for e in container["env"])  # never a secret value
    assert {"name": "shared", "mountPath": "/mnt/shared"} in container["volumeMounts"]
    assert {"name": "shared", "persistentVolumeClaim": {"claimName": "depth-shared"}} in pod[
        "volumes"
    ]
    crd.validate_job(obj)


def test_trainjob_and_pytorchjob_agree(job, trainjob):
    """Both derive from one description: same image, command, placement, storage, secrets."""
    pt = manifests.build_pytorchjob(job)
    tj_pod = trainjob["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"
    ][0]["template"]["spec"]["template"]["spec"]
    pt_pod = pt["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    for key in ("nodeSelector", "tolerations", "volumes", "securityContext", "serviceAccountName"):
        assert tj_pod[key] == pt_pod[key], key
    (tj_c,), (pt_c,) = tj_pod["containers"], pt_pod["containers"]
    assert pt_c["image"] == trainjob["spec"]["trainer"]["image"]
    assert pt_c["command"] == trainjob["spec"]["trainer"]["command"]
    assert pt_c["env"] == trainjob["spec"]["trainer"]["env"] + tj_c["env"]
    assert pt_c["volumeMounts"] == tj_c["volumeMounts"]
    assert pt_c["resources"] == trainjob["spec"]["trainer"]["resourcesPerNode"]
    assert (
        pt["spec"]["runPolicy"]["activeDeadlineSeconds"]
        == trainjob["spec"]["activeDeadlineSeconds"]
    )


def test_pytorchjob_object(job):
    obj = manifests.build_pytorchjob(job)
    assert obj["apiVersion"] == "kubeflow.org/v1" and obj["kind"] == "PyTorchJob"
    spec = obj["spec"]
    assert spec["nprocPerNode"] == "4" and spec["runPolicy"]["activeDeadlineSeconds"] == 7200
    reps = spec["pytorchReplicaSpecs"]
    assert reps["Master"]["replicas"] == 1 and reps["Worker"]["replicas"] == 1
    (container,) = reps["Master"]["template"]["spec"]["containers"]
    assert container["name"] == "pytorch" and container["image"] == job.image
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 4}
    envs = {e["name"]: e for e in container["env"]}
    assert envs["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3-credentials",
        "key": "AWS_ACCESS_KEY_ID",
        "optional": True,
    }
    assert "value" not in envs["AWS_ACCESS_KEY_ID"]  # never a secret value in the object
    crd.validate_job(obj)
    single = manifests.build_pytorchjob(scaleout_job(["training.procs_per_node=2"]))
    assert "Worker" not in single["spec"]["pytorchReplicaSpecs"]
    crd.validate_job(single)


def test_cpu_trainjob_has_no_gpus_and_validates():
    cpu = scaleout_job(["training.num_nodes=2", "training.shared_pvc=depth-shared"])
    obj = created_trainjob(cpu)
    assert "resourcesPerNode" not in obj["spec"]["trainer"]
    assert {"name": "OMP_NUM_THREADS", "value": "1"} in obj["spec"]["trainer"]["env"]
    crd.validate_job(obj)


def test_launcher_dispatches_on_training_launcher(job):
    with TrainingApiDouble([{}]) as kube:
        api = kube.api_client()
        assert cluster.launcher_for("trainjob", job.namespace, api).kind == "trainjob"
        assert cluster.launcher_for("pytorchjob", job.namespace, api).kind == "pytorchjob"
        with pytest.raises(ConfigError, match="training.launcher"):
            cluster.launcher_for("mpijob", job.namespace, api)


@pytest.mark.parametrize(
    ("kind", "mutate", "needle"),
    [
        ("PyTorchJob", lambda o: o["spec"].__setitem__("nprocPerNode", 4), "nprocPerNode"),
        ("PyTorchJob", lambda o: o["spec"].pop("pytorchReplicaSpecs"), "pytorchReplicaSpecs"),
        ("TrainJob", lambda o: o["spec"].pop("runtimeRef"), "runtimeRef"),
        ("TrainJob", lambda o: o["spec"]["trainer"].__setitem__("numNodes", "2"), "numNodes"),
        ("TrainJob", lambda o: o["spec"]["runtimePatches"][0].pop("manager"), "runtimePatches.0"),
    ],
)
def test_crd_validation_catches_bad_objects(job, trainjob, kind, mutate, needle):
    obj = copy.deepcopy(trainjob if kind == "TrainJob" else manifests.build_pytorchjob(job))
    mutate(obj)
    with pytest.raises(ConfigError, match=needle):
        crd.validate_job(obj)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, cluster.JobState("pending")),
        ({"conditions": [{"type": "Created", "status": "True"}]}, cluster.JobState("pending")),
        ({"conditions": [{"type": "Running", "status": "True"}]}, cluster.JobState("running")),
        (
            {"conditions": [{"type": "Complete", "status": "True", "reason": "JobSetCompleted"}]},
            cluster.JobState("succeeded", "JobSetCompleted"),
        ),
        (
            {
                "conditions": [
                    {"type": "Running", "status": "False"},
                    {"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded"},
                ]
            },
            cluster.JobState("succeeded", "PyTorchJobSucceeded"),
        ),
        (
            {
                "conditions": [
                    {"type": "Running", "status": "True"},
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "pod node-0-0 exit code 1",
                    },
                ]
            },
            cluster.JobState("failed", "BackoffLimitExceeded", "pod node-0-0 exit code 1"),
        ),
    ],
)
def test_job_state(status, expected):
    assert cluster.job_state({"status": status}) == expected
