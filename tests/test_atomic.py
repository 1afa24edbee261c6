"""depth_common.atomic: whole-or-nothing writes of files, bytes and trees; leftovers of killed runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from depth_common import atomic

ROOT = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != atomic.MARKER
    }


def test_file_bytes_and_text_replace_the_target_whole(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    assert atomic.write_bytes(target, b"one") == target  # the parent is created
    atomic.write_bytes(target, memoryview(b"two-two"))
    assert target.read_bytes() == b"two-two"
    atomic.write_text(tmp_path / "t.txt", "m\u00e8tres\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "m\u00e8tres\n"
    atomic.atomic_write(tmp_path / "cb.bin", lambda fh: fh.write(bytes(range(5))))
    assert (tmp_path / "cb.bin").read_bytes() == bytes(range(5))
    assert atomic.leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cb.bin", "sub", "t.txt"]


def test_a_failed_write_leaves_the_old_content_and_no_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    seen = []
    with pytest.raises(RuntimeError, match="parity"), atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"new, half")
        seen.append(target.read_bytes())  # a reader meanwhile sees the old file
        raise RuntimeError("parity gate failed")
    assert seen == [b"old"] and target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    with (
        pytest.raises(FileNotFoundError, match="nothing was written"),
        atomic.atomic_path(tmp_path / "never.bin"),
    ):
        pass
    assert not (tmp_path / "never.bin").exists()


def test_a_tree_replaces_an_existing_tree_whole(tmp_path):
    target = tmp_path / "repo"
    (target / "depth" / "1").mkdir(parents=True)
    (target / "depth" / "1" / "model.onnx").write_bytes(b"v1")
    atomic.mark_managed(target)  # as a tree this project wrote carries it
    with atomic.atomic_path(target) as tmp:
        (tmp / "depth" / "2").mkdir(parents=True)
        (tmp / "depth" / "2" / "model.onnx").write_bytes(b"v2")
        assert _tree(target) == {"depth/1/model.onnx": b"v1"}
    assert _tree(target) == {"depth/2/model.onnx": b"v2"}  # the old tree is gone, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]
    assert (target / atomic.MARKER).is_file()  # the new tree is the project's too


@pytest.mark.parametrize("how", ["atomic_path", "copy_atomic"])
def test_a_tree_never_replaces_a_directory_the_project_did_not_write(tmp_path, how):
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "thesis.tex").write_text("years of work")
    src = tmp_path / "src"
    (src / "depth").mkdir(parents=True)
    with pytest.raises(atomic.UnmanagedDirectoryError, match=f"^{home}: not empty and not written"):
        if how == "atomic_path":
            with atomic.atomic_path(home) as tmp:
                tmp.mkdir()
        else:
            atomic.copy_atomic(src, home)
    assert _tree(home) == {"notes/thesis.tex": b"years of work"}
    assert not (home / atomic.MARKER).exists()
    assert atomic.leftovers(tmp_path) == []


def test_an_empty_directory_may_be_replaced_and_a_file_is_not_a_tree(tmp_path):
    (tmp_path / "empty").mkdir()
    atomic.copy_atomic(tmp_path / "empty", tmp_path / "empty2")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").write_text("a")
    assert _tree(atomic.copy_atomic(tmp_path / "src", tmp_path / "empty")) == {"a": b"a"}
    (tmp_path / "file").write_text("x")
    with pytest.raises(atomic.UnmanagedDirectoryError, match="not a directory this project"):
        atomic.check_managed(tmp_path / "file")


def test_claim_dir_creates_marks_or_refuses(tmp_path):
    new = atomic.claim_dir(tmp_path / "a" / "b")
    assert (new / atomic.MARKER).is_file()
    (new / "last.pt").write_bytes(b"ckpt")
    assert atomic.claim_dir(new) == new  # its own directory again: fine
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("x")
    with pytest.raises(atomic.UnmanagedDirectoryError, match=str(foreign)):
        atomic.claim_dir(foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["x"]


def test_copy_atomic_copies_a_file_or_a_tree(tmp_path):
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    (src / "manifest.json").write_text("{}")
    (src / "train" / "a.npy").write_bytes(b"\x93NUMPY")
    dst = atomic.copy_atomic(src, tmp_path / "dst")
    assert _tree(dst) == _tree(src)
    (src / "train" / "a.npy").write_bytes(b"changed")
    atomic.copy_atomic(src, dst)  # onto an existing tree
    assert _tree(dst) == _tree(src)
    one = atomic.copy_atomic(src / "manifest.json", tmp_path / "best" / "m.json")
    assert one.read_text() == "{}"
    assert atomic.leftovers(tmp_path) == []


def test_temporaries_have_one_recognisable_name(tmp_path):
    tmp = atomic.temp_sibling(tmp_path / "params.yaml")
    assert tmp.parent == tmp_path and tmp.name.startswith(".params.yaml.")
    assert tmp.name.endswith(".tmp")
    name = atomic.parse_temp_name(tmp.name)
    assert name is not None and name.target == "params.yaml" and name.pid == os.getpid()
    assert atomic.temp_sibling(tmp_path / "p.yaml") != atomic.temp_sibling(tmp_path / "p.yaml")
    with_ext = atomic.temp_sibling(tmp_path / "depth_pipeline.yaml", ".yaml")
    assert with_ext.suffix == ".yaml"
    assert atomic.parse_temp_name(with_ext.name).target == "depth_pipeline.yaml"
    for other in ("params.yaml", ".params.yaml.swp", "a.123.tmp", ".a.12@h.zzzzzzzz.tmp"):
        assert atomic.parse_temp_name(other) is None
    with pytest.raises(ValueError, match="extension"):
        atomic.temp_sibling(tmp_path / "x", "yaml")


def test_scratch_dir_is_removed_and_recognisable(tmp_path):
    with atomic.scratch_dir(tmp_path / "repo") as scratch:
        (scratch / "staged").write_text("x")
        assert atomic.leftovers(tmp_path) == [scratch]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyError), atomic.scratch_dir(tmp_path / "repo"):
        raise KeyError("copy failed")
    assert list(tmp_path.iterdir()) == []


_KILLED_WRITER = """
import sys, time
from depth_common import atomic
with atomic.atomic_path(sys.argv[1]) as tmp:
    tmp.mkdir()
    (tmp / "part-0").write_bytes(b"x" * 1000)
    print(tmp, flush=True)
    time.sleep(60)
"""


def test_remove_leftovers_removes_what_a_killed_writer_left(tmp_path):
    target = tmp_path / "runs" / "data"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    tmp = Path(proc.stdout.readline().strip())
    assert atomic.remove_leftovers(tmp_path) == []  # its writer is alive: a write in progress
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    assert (tmp / "part-0").is_file() and not target.exists()  # killed: no cleanup ran
    assert atomic.leftovers(tmp_path) == [tmp]
    assert atomic.remove_leftovers(tmp_path) == [tmp]
    assert list((tmp_path / "runs").iterdir()) == []


def test_remove_leftovers_from_other_hosts_only_by_age(tmp_path):
    (tmp_path / "out").mkdir()
    other = tmp_path / "out" / ".best.pt.7@train-pod-0.0123abcd.tmp"  # another pod's pid 7
    other.write_bytes(b"partial")
    mine = atomic.temp_sibling(tmp_path / "out" / "last.pt")
    mine.write_bytes(b"in progress")  # this process: alive
    assert atomic.remove_leftovers(tmp_path, recursive=False) == []  # not entered: out/
    assert atomic.remove_leftovers(tmp_path) == []
    old = time.time() - 2 * atomic.DAY_S
    os.utime(other, (old, old))
    os.utime(mine, (old, old))
    assert atomic.remove_leftovers(tmp_path) == sorted([other, mine])
    assert list((tmp_path / "out").iterdir()) == []
