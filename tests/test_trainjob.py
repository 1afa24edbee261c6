"""depth_common.trainjob: job objects from params, CRD validation, the SDK path, wait/fail."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import yaml

from depth_common import trainjob as T
from depth_common.config import ConfigError, load_params

CLUSTER = [
    "training.num_nodes=2",
    "training.procs_per_node=4",
    "training.train_gpu=4",
    'training.node_selector=["nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3"]',
    'training.tolerations=["nvidia.com/gpu:NoSchedule", "dedicated=ml:NoExecute"]',
    "training.shared_pvc=depth-shared",
    "training.mlflow_secret=mlflow-credentials",
    "training.storage_secret=s3-credentials",
    "training.job_timeout_s=7200",
]


def _job(overrides=CLUSTER, **kw):
    params = load_params("params.yaml", overrides)
    return T.job_from_params(
        params,
        name=kw.pop("name", "depth-train-1"),
        params_path="/mnt/shared/run1/params.yaml",
        data_dir="/mnt/shared/run1/data",
        out_dir="/mnt/shared/run1/out",
        **kw,
    )


@pytest.fixture(scope="module")
def job():
    return _job()


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
    cpu = _job(["training.num_nodes=2"])
    assert cpu.image.endswith(":0.1.0") and cpu.gpus_per_node == 0 and cpu.secret_env == ()
    assert ("OMP_NUM_THREADS", "1") in cpu.env


@pytest.mark.parametrize(
    ("overrides", "kw", "needle"),
    [
        (["training.train_gpu=1", "training.procs_per_node=2"], {}, "training.procs_per_node"),
        (['training.tolerations=["gpu:Sometimes"]'], {}, r"training.tolerations\[0\]"),
        (['training.tolerations=["=x:NoSchedule"]'], {}, r"training.tolerations\[0\]"),
        ([], {"name": "Depth_Train"}, "job name: got 'Depth_Train'"),
    ],
)
def test_bad_settings_are_named(overrides, kw, needle):
    with pytest.raises(ConfigError, match=needle):
        _job(overrides, **kw)


def test_trainjob_object(job):
    obj = T.build_trainjob(job)
    assert obj["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and obj["kind"] == "TrainJob"
    spec = obj["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "kind": "ClusterTrainingRuntime"}
    assert spec["trainer"]["numNodes"] == 2
    assert spec["trainer"]["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": 4}
    assert spec["trainer"]["command"] == list(job.command)
    rjob = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = rjob[0]["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]}
    assert secret_refs["MLFLOW_TRACKING_TOKEN"] == "mlflow-credentials"
    assert {"name": "shared", "mountPath": "/mnt/shared"} in container["volumeMounts"]
    assert {"name": "shared", "persistentVolumeClaim": {"claimName": "depth-shared"}} in pod[
        "volumes"
    ]
    T.validate_job(obj)


def test_pytorchjob_object(job):
    obj = T.build_pytorchjob(job)
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
    T.validate_job(obj)
    single = T.build_pytorchjob(_job(["training.procs_per_node=2"]))
    assert "Worker" not in single["spec"]["pytorchReplicaSpecs"]
    T.validate_job(single)


def test_build_job_dispatches_on_launcher(job):
    assert T.build_job(job, "trainjob")["kind"] == "TrainJob"
    assert T.build_job(job, "pytorchjob")["kind"] == "PyTorchJob"
    with pytest.raises(ConfigError, match="training.launcher"):
        T.build_job(job, "mpijob")


@pytest.mark.parametrize(
    ("kind", "mutate", "needle"),
    [
        ("pytorchjob", lambda o: o["spec"].__setitem__("nprocPerNode", 4), "nprocPerNode"),
        ("pytorchjob", lambda o: o["spec"].pop("pytorchReplicaSpecs"), "pytorchReplicaSpecs"),
        ("trainjob", lambda o: o["spec"].pop("runtimeRef"), "runtimeRef"),
        ("trainjob", lambda o: o["spec"]["trainer"].__setitem__("numNodes", "2"), "numNodes"),
        (
            "trainjob",
            lambda o: o["spec"]["runtimePatches"][0].pop("manager"),
            "runtimePatches.0",
        ),
    ],
)
def test_crd_validation_catches_bad_objects(job, kind, mutate, needle):
    obj = copy.deepcopy(T.build_job(job, kind))
    mutate(obj)
    with pytest.raises(T.JobValidationError, match=needle):
        T.validate_job(obj)


def test_the_sdk_creates_exactly_the_built_trainjob(job):
    """TrainerClient.train (Kubernetes backend) with trainer_client_inputs posts build_trainjob."""
    from kubeflow.trainer.backends.kubernetes.backend import KubernetesBackend
    from kubeflow.trainer.types import types

    backend = KubernetesBackend.__new__(KubernetesBackend)  # no cluster: record the API call
    backend.namespace = job.namespace
    backend.custom_api = mock.MagicMock()
    runtime = types.Runtime(
        name="torch-distributed",
        trainer=types.RuntimeTrainer(
            trainer_type=types.TrainerType.CUSTOM_TRAINER, framework="torch", image="unused"
        ),
        kind=types.RuntimeKind.CLUSTER_TRAINING_RUNTIME,
    )
    backend.get_runtime = lambda name: runtime
    name = backend.train(**T.trainer_client_inputs(job))
    assert name == job.name
    call = backend.custom_api.create_namespaced_custom_object.call_args
    assert call.args[:4] == ("trainer.kubeflow.org", "v1alpha1", job.namespace, "trainjobs")
    assert call.args[4] == T.build_trainjob(job)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, T.JobState("pending")),
        ({"conditions": [{"type": "Created", "status": "True"}]}, T.JobState("pending")),
        ({"conditions": [{"type": "Running", "status": "True"}]}, T.JobState("running")),
        (
            {"conditions": [{"type": "Complete", "status": "True", "reason": "JobSetCompleted"}]},
            T.JobState("succeeded", "JobSetCompleted"),
        ),
        (
            {
                "conditions": [
                    {"type": "Running", "status": "False"},
                    {"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded"},
                ]
            },
            T.JobState("succeeded", "PyTorchJobSucceeded"),
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
            T.JobState("failed", "BackoffLimitExceeded", "pod node-0-0 exit code 1"),
        ),
    ],
)
def test_job_state(status, expected):
    assert T.job_state({"status": status}) == expected


def test_write_params_file_round_trips(tmp_path):
    params = load_params("params.yaml", CLUSTER)
    path = T.write_params_file(params, tmp_path / "run" / "params.yaml")
    assert load_params(path) == params
    assert [p.name for p in path.parent.iterdir()] == ["params.yaml"]  # no temp file left


# -- submit / wait / logs against a recorded Kubernetes API double on 127.0.0.1 ------------------

LOG_LINES = ("epoch 1/2 train_loss 1.0", "epoch 2/2 train_loss 0.5")


class _KubeDouble:
    """The Kubernetes API calls ClusterJobs (and TrainerClient) make, answered on 127.0.0.1:
    each GET of the job returns the next status in ``statuses`` (the last one repeats). For
    TrainJobs it serves the real ``torch-distributed`` ClusterTrainingRuntime (vendored)."""

    def __init__(self, statuses, plural="pytorchjobs", log_lines=LOG_LINES):
        import http.server
        import json
        import threading
        from urllib.parse import parse_qs, urlparse

        self.statuses = list(statuses)
        self.requests: list[tuple[str, str]] = []
        self.created: dict | None = None
        runtime = yaml.safe_load((T.CRD_DIR / "runtime_torch_distributed.yaml").read_text())
        container = "node" if plural == "trainjobs" else "pytorch"
        master = (
            "batch.kubernetes.io/job-completion-index=0"
            if plural == "trainjobs"
            else "training.kubeflow.org/replica-type=master"
        )
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def _send(self, code, body, ctype="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                double.requests.append(("POST", self.path))
                n = int(self.headers["Content-Length"])
                double.created = json.loads(self.rfile.read(n))
                self._send(201, double.created)

            def do_DELETE(self):
                double.requests.append(("DELETE", self.path))
                self._send(200, {"kind": "Status", "status": "Success"})

            def do_GET(self):
                url = urlparse(self.path)
                double.requests.append(("GET", url.path))
                if url.path.endswith("/log"):
                    assert parse_qs(url.query)["container"] == [container]
                    self._send(200, ("\n".join(log_lines) + "\n").encode(), "text/plain")
                elif url.path.endswith("/pods"):
                    assert master in parse_qs(url.query)["labelSelector"][0]
                    phase = "Pending" if len(double.requests) < 6 else "Running"
                    pod = {
                        "metadata": {"name": "depth-train-1-master-0"},
                        "status": {"phase": phase},
                    }
                    self._send(200, {"kind": "PodList", "apiVersion": "v1", "items": [pod]})
                elif url.path.endswith("/clustertrainingruntimes/torch-distributed"):
                    self._send(200, runtime)
                elif f"/{plural}/" in url.path:
                    st = double.statuses.pop(0) if len(double.statuses) > 1 else double.statuses[0]
                    self._send(200, {**double.created, "status": st})
                else:  # e.g. the Trainer's version ConfigMap, namespaced TrainingRuntimes
                    self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.api = client.ApiClient(cfg)
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _cond(kind, reason="", message=""):
    return {"conditions": [{"type": kind, "status": "True", "reason": reason, "message": message}]}


def test_cluster_jobs_submit_wait_stream_logs(job):
    lines: list[str] = []
    statuses = [{}, _cond("Running"), _cond("Running"), _cond("Succeeded", "PyTorchJobSucceeded")]
    with _KubeDouble(statuses) as kube:
        jobs = T.ClusterJobs(job.namespace, api_client=kube.api)
        state = jobs.run(job, "pytorchjob", log=lines.append, poll_s=0.01)
    assert state == T.JobState("succeeded", "PyTorchJobSucceeded")
    assert kube.requests[0] == (
        "POST",
        f"/apis/kubeflow.org/v1/namespaces/{job.namespace}/pytorchjobs",
    )
    assert kube.created == T.build_pytorchjob(job)
    assert "epoch 2/2 train_loss 0.5" in lines  # the master's log reached the task log
    assert lines[0].startswith("submitted pytorchjob")


def test_trainjob_through_trainer_client_end_to_end(job):
    """TrainerClient (Kubernetes backend) resolves the runtime and creates the TrainJob; the
    wait streams node-0's log and returns on Complete."""
    lines: list[str] = []
    statuses = [{}, _cond("Complete", "JobSetCompleted")]
    with _KubeDouble(statuses, plural="trainjobs") as kube:
        jobs = T.ClusterJobs(job.namespace, api_client=kube.api)
        state = jobs.run(job, "trainjob", log=lines.append, poll_s=0.01)
    assert state.phase == "succeeded"
    posts = [path for m, path in kube.requests if m == "POST"]
    assert posts == [f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{job.namespace}/trainjobs"]
    assert kube.created == T.build_trainjob(job)
    assert (
        "GET",
        "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes/torch-distributed",
    ) in (kube.requests)
    assert "epoch 2/2 train_loss 0.5" in lines


def test_cluster_jobs_fail_with_the_jobs_reason(job):
    statuses = [_cond("Running"), _cond("Failed", "PyTorchJobFailed", "master-0 exited with 1")]
    with _KubeDouble(statuses) as kube:
        jobs = T.ClusterJobs(job.namespace, api_client=kube.api)
        with pytest.raises(T.JobFailed, match="PyTorchJobFailed: master-0 exited with 1"):
            jobs.run(job, "pytorchjob", log=lambda _: None, poll_s=0.01)
    assert not any(m == "DELETE" for m, _ in kube.requests)  # failed jobs stay for post-mortems


def test_cluster_jobs_time_out_and_delete_the_job(job):
    with _KubeDouble([{}]) as kube:  # never starts
        jobs = T.ClusterJobs(job.namespace, api_client=kube.api)
        name = jobs.submit(job, "pytorchjob")
        with pytest.raises(TimeoutError, match="training.job_timeout_s"):
            jobs.wait(name, "pytorchjob", timeout_s=0.2, poll_s=0.02, log=lambda _: None)
    assert kube.requests[-1] == (
        "DELETE",
        f"/apis/kubeflow.org/v1/namespaces/{job.namespace}/pytorchjobs/{job.name}",
    )


class _FakeJobs:
    """Stands in for the cluster: 'runs' the job by writing the checkpoint rank 0 would."""

    def __init__(self, shared):
        self.shared = shared
        self.ran = []

    def run(self, job, launcher, log):
        import torch

        from depth_common.checkpoint import save_checkpoint

        self.ran.append((job, launcher))
        out = self.shared / job.name / "out"
        out.mkdir(parents=True)
        history = [{"epoch": 1, "train_loss": 0.7}, {"epoch": 2, "train_loss": 0.5}]

        class Tiny(torch.nn.Linear):
            config = {"encoder": "tiny", "decoder_features": 8, "img_size": [32, 32], "hooks": [0]}

        save_checkpoint(
            out / "best.pt",
            Tiny(2, 1),
            self.params,
            epoch=2,
            metrics={"val_rmse": 3.5},
            mlflow_run_id="run-123",
        )
        save_checkpoint(
            out / "last.pt",
            Tiny(2, 1),
            self.params,
            epoch=2,
            metrics={"val_rmse": 3.9},
            extra={"history": history},
        )
        return T.JobState("succeeded")


def test_run_scaled_training_moves_data_and_checkpoint(tmp_path):
    processed = tmp_path / "processed"
    (processed / "train").mkdir(parents=True)
    (processed / "manifest.json").write_text("{}")
    shared = tmp_path / "shared"
    shared.mkdir()
    params = load_params("params.yaml", CLUSTER)
    fake = _FakeJobs(shared)
    fake.params = params
    result = T.run_scaled_training(
        params, processed, tmp_path / "model", run_name="depth-run-7", shared_root=shared, jobs=fake
    )
    assert result.checkpoint_path == tmp_path / "model" / "best.pt"
    assert result.checkpoint_path.read_bytes() == (shared / "depth-run-7/out/best.pt").read_bytes()
    assert result.best_val == {"val_rmse": 3.5} and result.mlflow_run_id == "run-123"
    assert result.epochs_run == 2
    assert (shared / "depth-run-7" / "data" / "manifest.json").is_file()
    assert load_params(shared / "depth-run-7" / "params.yaml") == params
    ((job, launcher),) = fake.ran
    assert launcher == "trainjob"
    assert "/mnt/shared/depth-run-7/data" in job.command
    with pytest.raises(ConfigError, match="training.shared_pvc"):
        T.run_scaled_training(
            load_params("params.yaml", ["training.num_nodes=2"]),
            processed,
            tmp_path / "m2",
            run_name="x",
            shared_root=shared,
            jobs=fake,
        )


@pytest.mark.parametrize(
    "seed",
    ["depth-pipeline-x7k2p-system-container-impl-2212498111", "A_B", "", "x" * 200, "--"],
)
def test_job_name_for_is_a_valid_unique_name(seed):
    name = T.job_name_for(seed)
    assert T._NAME_RE.match(name) and len(name) <= 63
    assert name != T.job_name_for(seed + "1")
