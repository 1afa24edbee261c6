"""The content digest of a preprocessed dataset: what lineage calls "the data".

Preprocessing hashes every file it produced (the RGB PNG, the metric-depth ``.npy`` and, for
evaluation splits, the full-resolution ground truth), keyed by path relative to the dataset
root, and writes them to the manifest; the digest is the SHA-256 of those ``path sha256``
lines in path order, so it depends on the bytes and the layout, never on where the directory
lives or in which order the workers finished. It is cut to :data:`DIGEST_CHARS` hex characters
because MLflow stores a dataset digest in a 36-character column (``datasets.digest``): the
same string is then the manifest's, the MLflow dataset input's and the registry tag's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from depth_common.errors import DataError

#: Hex characters of the data digest (128 bits of SHA-256; fits MLflow's VARCHAR(36)).
DIGEST_CHARS = 32
_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of one file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(root: str | Path, files: Iterable[str | Path]) -> dict[str, str]:
    """``{path relative to root (POSIX): sha256}`` of ``files``, sorted by path."""
    root = Path(root)
    out: dict[str, str] = {}
    for f in files:
        path = Path(f)
        rel = (path.relative_to(root) if path.is_absolute() else path).as_posix()
        try:
            out[rel] = file_sha256(root / rel)
        except OSError as exc:
            raise DataError(f"{root / rel}: cannot hash a dataset file ({exc.strerror})") from None
    return dict(sorted(out.items()))


def content_digest(hashes: Mapping[str, str]) -> str:
    """The dataset digest of ``{relative path: sha256}``: independent of the mapping's order."""
    lines = "".join(f"{rel} {sha}\n" for rel, sha in sorted(hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()[:DIGEST_CHARS]


def manifest_digest(manifest: Mapping[str, Any], where: str | Path) -> str:
    """The digest a manifest records, checked against its own file list (``where``: its path)."""
    files, digest = manifest.get("files"), manifest.get("digest")
    if not isinstance(files, dict) or not isinstance(digest, str):
        raise DataError(
            f"{where}: no 'files'/'digest' entries (written by a preprocessing run older than "
            "the data digest); preprocess the dataset again"
        )
    if content_digest(files) != digest:
        raise DataError(f"{where}: 'digest' {digest} does not match its 'files' list")
    return digest
