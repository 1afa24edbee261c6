"""pipelines.docker_run without an engine: mounts, users, and the task container's exit status."""

from __future__ import annotations

from pathlib import Path

import pytest

from depth_common.errors import DataError
from pipelines import docker_run
from pipelines.docker_run import ImageInfo, run_container, runner_options, shared_dirs


class FakeContainer:
    def __init__(self, code: int, removed_before_wait: bool = False) -> None:
        self.code = code
        self.removed = False
        self.removed_before_wait = removed_before_wait

    def logs(self, stream: bool, follow: bool):
        yield b"Traceback (most recent call last):\n"
        yield b"ValueError: bad\n"

    def wait(self) -> dict:
        assert not self.removed, "the exit status must be read before the container goes"
        return {"StatusCode": self.code}

    def remove(self, force: bool) -> None:
        self.removed = True


class FakeClient:
    def __init__(self, container: FakeContainer) -> None:
        self.container = container
        self.run_kwargs: dict = {}

    @property
    def containers(self):
        return self

    def run(self, **kwargs):
        self.run_kwargs = kwargs
        return self.container


@pytest.mark.parametrize("code", [0, 1, 137])
def test_the_exit_status_is_the_containers_and_it_is_removed_after(code: int, capsys) -> None:
    container = FakeContainer(code)
    client = FakeClient(container)
    got = run_container(client, "img:1", ["python", "-c", "x"], {"/r": {}}, auto_remove=True)
    assert got == code
    assert container.removed
    assert "auto_remove" not in client.run_kwargs and client.run_kwargs["detach"] is True
    assert "ValueError: bad" in capsys.readouterr().out


def test_safe_docker_tasks_swaps_kfps_runner_in_and_back() -> None:
    from kfp.local import docker_task_handler

    original = docker_task_handler.run_docker_container
    with docker_run.safe_docker_tasks():
        assert docker_task_handler.run_docker_container is run_container
    assert docker_task_handler.run_docker_container is original


def test_shared_dirs_are_the_store_and_the_served_repositorys_parent(tmp_path: Path) -> None:
    store = tmp_path / "containers"
    dirs = shared_dirs(f"sqlite:///{store}/mlflow.db", str(store / "triton_repository"))
    assert dirs == [store]
    other = shared_dirs(f"sqlite:///{store}/mlflow.db", str(tmp_path / "serve" / "repo"))
    assert other == [store, tmp_path / "serve"]
    assert shared_dirs("http://mlflow:5000", str(store / "repo")) == [store]
    with pytest.raises(DataError, match="mlflow.tracking_uri sqlite:///mlflow.db: an absolute"):
        shared_dirs("sqlite:///mlflow.db", str(store / "repo"))
    with pytest.raises(DataError, match="export.repository_dir saved_models/x: an absolute"):
        shared_dirs(f"sqlite:///{store}/mlflow.db", "saved_models/x")


def test_runner_options_lock_the_task_down(tmp_path: Path) -> None:
    image = ImageInfo("img:1", "10001:10001", "")
    opts = runner_options("10001:10001", image, [tmp_path])
    assert opts["user"] == "10001:10001" and opts["cap_drop"] == ["ALL"]
    assert opts["network_mode"] == "none" and opts["security_opt"] == ["no-new-privileges"]
    (mount,) = opts["mounts"]
    assert mount["Source"] == mount["Target"] == str(tmp_path) and mount["Type"] == "bind"
    assert opts["environment"] == {}
    # Another uid than the image's: its home is not writable, so HOME moves.
    assert runner_options("1000:1000", image, [])["environment"] == {"HOME": "/tmp"}


def test_hand_over_gives_the_directories_to_the_image_user(tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(docker_run.os, "geteuid", lambda: 0)
    monkeypatch.setattr(docker_run.os, "chown", lambda p, u, g, **kw: calls.append((Path(p), u, g)))
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert docker_run.hand_over([tmp_path / "a", tmp_path / "new"], "10001:10002") == "10001:10002"
    assert {c[0] for c in calls} == {tmp_path / "a", tmp_path / "a" / "b", tmp_path / "new"}
    assert {c[1:] for c in calls} == {(10001, 10002)}
    monkeypatch.setattr(docker_run.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(docker_run.os, "getuid", lambda: 1000)
    monkeypatch.setattr(docker_run.os, "getgid", lambda: 1000)
    assert docker_run.hand_over([tmp_path / "a"], "10001:10002") == "1000:1000"
