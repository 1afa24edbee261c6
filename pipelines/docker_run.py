"""Run the local pipeline's tasks in the component image (``kfp.local.DockerRunner``).

Every task runs in the image the components name (``images/images.env``), as the image's own
non-root user, with all capabilities dropped, no new privileges and no network (nothing is
downloaded at run time; the deploy task's Triton listens on the container's own loopback).
kfp.local bind-mounts the pipeline root at the same path; the MLflow store directory is mounted
the same way, and both are handed to the image's user (``chown`` when this process is root,
otherwise the tasks run as the calling user, who owns them already).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depth_common.errors import ContainerError, DataError


@dataclass(frozen=True)
class ImageInfo:
    ref: str
    user: str  # "uid:gid" the image runs as
    revision: str  # its org.opencontainers.image.revision label ("" if none)


def docker_client() -> Any:
    """A client of the engine at ``DOCKER_HOST`` (or the default socket), or a clear error."""
    import docker

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        raise ContainerError(
            f"no Docker Engine answers at {host} ({type(exc).__name__}): start one with "
            '`eval "$(images/engine.sh start)"` and export DOCKER_HOST'
        ) from None
    return client


def inspect_image(client: Any, ref: str) -> ImageInfo:
    """The built image ``ref`` (never pulled: it is built here, by ``make images``)."""
    import docker

    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        raise ContainerError(
            f"image {ref} is not built on this engine: run `make images`"
        ) from None
    user = image.attrs.get("Config", {}).get("User") or ""
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or int(uid) == 0:
        raise ContainerError(
            f"image {ref} runs as {user or 'root'!r}: a numeric non-root USER expected"
        )
    labels = image.attrs.get("Config", {}).get("Labels") or {}
    return ImageInfo(
        ref, f"{uid}:{gid or uid}", labels.get("org.opencontainers.image.revision", "")
    )


def source_revision(root: Path) -> str:
    """The tree's revision as images/build.sh labels it (``<sha>`` or ``<sha>-dirty``)."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return ""
    dirty = git("diff", "--quiet", "HEAD").returncode != 0
    return head.stdout.strip() + ("-dirty" if dirty else "")


def hand_over(paths: list[Path], user: str) -> str:
    """Make ``paths`` writable by the user the tasks run as; returns that ``uid:gid``.

    As root: the directories go to the image's user. Otherwise the tasks run as this user
    (non-root too, and the owner of the directories already).
    """
    if os.geteuid() != 0:
        return f"{os.getuid()}:{os.getgid()}"
    uid, gid = (int(x) for x in user.split(":"))
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        for p in [path, *path.rglob("*")]:
            os.chown(p, uid, gid, follow_symlinks=False)
    return user


def runner_options(user: str, image: ImageInfo, shared: list[Path]) -> dict[str, Any]:
    """``containers.run`` arguments for every task, run as ``user``, ``shared`` mounted at
    their own paths."""
    import docker

    mounts = [docker.types.Mount(target=str(d), source=str(d), type="bind") for d in shared]
    # Another uid than the image's cannot write the image user's home.
    env = {} if user == image.user else {"HOME": "/tmp"}
    return {
        "user": user,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "network_mode": "none",
        "mounts": mounts,
        "environment": env,
        # Triton's python backend hands tensors to its stub through /dev/shm.
        "shm_size": "256m",
    }


def run_container(
    client: Any, image: str, command: list[str], volumes: dict, **run_args: Any
) -> int:
    """One task's container: stream its output, return its exit status, then remove it.

    Stands in for kfp.local's ``run_docker_container`` (kfp 2.17), which starts containers
    with ``auto_remove=True`` and reads a container already removed when ``wait()`` comes as
    *success*: a failing task could pass. Here the container is removed only after its exit
    status has been read. Images are never pulled (they are built here).
    """
    run_args.pop("auto_remove", None)
    container = client.containers.run(
        image=image, command=command, detach=True, volumes=volumes, **run_args
    )
    try:
        for chunk in container.logs(stream=True, follow=True):
            print(chunk.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    """An engine that stops answering mid-run becomes one ContainerError naming its socket."""
    import docker
    import requests

    try:
        yield
    except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise ContainerError(
            f"the Docker Engine at {host} failed during the run ({type(exc).__name__}: {exc})"
        ) from None


@contextlib.contextmanager
def safe_docker_tasks() -> Iterator[None]:
    """kfp.local's Docker task handler uses :func:`run_container` inside this block."""
    from kfp.local import docker_task_handler

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_container
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original


def shared_dirs(tracking_uri: str, repository_dir: str) -> list[Path]:
    """Host directories the tasks write besides the pipeline root: a ``sqlite:///`` MLflow
    store's directory (the database, its journal, ``mlartifacts/``) and the parent of the
    repository the deploy task installs (it stages the new tree next to the old one)."""
    from depth_common.registry.tracking import sqlite_path

    dirs = []
    db = sqlite_path(tracking_uri)
    if db is not None:
        if not db.is_absolute():
            raise DataError(f"mlflow.tracking_uri {tracking_uri}: an absolute sqlite path expected")
        dirs.append(db.parent)
    repo = Path(repository_dir)
    if not repo.is_absolute():
        raise DataError(f"export.repository_dir {repository_dir}: an absolute path expected")
    dirs.append(repo.parent)
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique
