"""The processed dataset's content digest: every file, in a stable order, checked on read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from depth_common.data.digest import (
    DIGEST_CHARS,
    content_digest,
    file_hashes,
    manifest_digest,
)
from depth_common.data.preprocess import MANIFEST
from depth_common.errors import DataError


def test_manifest_lists_every_written_file_with_its_sha256(processed_data: Path) -> None:
    manifest = json.loads((processed_data / MANIFEST).read_text())
    on_disk = sorted(
        p.relative_to(processed_data).as_posix()
        for p in processed_data.rglob("*")
        if p.is_file() and p.suffix in (".png", ".npy")
    )
    assert sorted(manifest["files"]) == on_disk
    some = on_disk[0]
    assert (
        manifest["files"][some] == hashlib.sha256((processed_data / some).read_bytes()).hexdigest()
    )
    lines = "".join(f"{k} {v}\n" for k, v in sorted(manifest["files"].items()))
    expected = hashlib.sha256(lines.encode()).hexdigest()[:DIGEST_CHARS]
    assert manifest["digest"] == expected == manifest_digest(manifest, "m.json")


def test_digest_ignores_order_and_sees_one_changed_byte(tmp_path: Path) -> None:
    for name, data in (("a/x.png", b"1"), ("b/y.npy", b"2")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    forward = file_hashes(tmp_path, [tmp_path / "a/x.png", tmp_path / "b/y.npy"])
    backward = file_hashes(tmp_path, ["b/y.npy", "a/x.png"])
    assert list(forward) == ["a/x.png", "b/y.npy"] and forward == backward
    assert content_digest(forward) == content_digest(dict(reversed(forward.items())))
    (tmp_path / "b/y.npy").write_bytes(b"3")
    assert content_digest(file_hashes(tmp_path, ["a/x.png", "b/y.npy"])) != content_digest(forward)
    with pytest.raises(DataError, match="nope.png"):
        file_hashes(tmp_path, ["nope.png"])


def test_a_manifest_whose_digest_disagrees_is_refused() -> None:
    files = {"a.png": "0" * 64}
    with pytest.raises(DataError, match="m.json: 'digest' x does not match"):
        manifest_digest({"files": files, "digest": "x"}, "m.json")
    with pytest.raises(DataError, match="m.json: no 'files'/'digest'"):
        manifest_digest({}, "m.json")
