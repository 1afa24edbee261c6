"""Atomic writes: a file, bytes or a directory tree appears under its final name whole, or not.

Everything is written under a temporary sibling of the target (same directory, so the same
filesystem, so the final :func:`os.replace` is a rename) named::

    .<target name>.<pid>@<host>.<8 hex>.tmp[<extension>]

A reader sees the old content or the complete new one, never part of it; a failed write removes
its temporary. A *killed* writer cannot clean up, but its temporary says who wrote it:
:func:`remove_leftovers` removes those whose process is gone (same host) or that are older than
a day (any host: on a volume shared between pods, another pod's process cannot be checked).

Never delete what the project did not write: every directory the project manages (a tree it
replaces whole, the serving repository, processed data, checkpoints and run directories) holds
the marker file :data:`MARKER`. An existing non-empty directory without it is refused
(:class:`UnmanagedDirectoryError`) instead of being replaced or written into, so a mistyped
``export.repository_dir=~`` can never move a home directory aside and delete it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from depth_common.errors import UnmanagedDirectoryError

DAY_S = 86400.0
#: The file that says "this project wrote this directory and may replace it".
MARKER = ".depth-managed"
_MARKER_TEXT = "written by depth_common; this directory may be replaced or rewritten whole\n"

_TEMP_RE = re.compile(
    r"^\.(?P<target>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]*)\.[0-9a-f]{8}\.tmp(?:\.[A-Za-z0-9]+)?$"
)


def _host() -> str:
    # Pod names are DNS labels already; anything else (dots of an FQDN) is folded to '-'.
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63]


def temp_sibling(path: str | Path, extension: str = "") -> Path:
    """A fresh temporary name beside ``path`` in the one recognisable form (nothing created).

    ``extension`` (e.g. ``".yaml"``) is appended for writers that choose a format by suffix.
    """
    path = Path(path)
    if extension and not re.fullmatch(r"\.[A-Za-z0-9]+", extension):
        raise ValueError(f"extension: got {extension!r}, expected '.' and letters/digits")
    token = secrets.token_hex(4)
    return path.with_name(f".{path.name}.{os.getpid()}@{_host()}.{token}.tmp{extension}")


@dataclass(frozen=True)
class TempName:
    """What a temporary's name says: the target it stands for and the process that wrote it."""

    target: str
    pid: int
    host: str


def parse_temp_name(name: str) -> TempName | None:
    """The parts of a name made by :func:`temp_sibling`; ``None`` for any other name."""
    m = _TEMP_RE.match(name)
    return TempName(m["target"], int(m["pid"]), m["host"]) if m else None


def check_managed(path: str | Path) -> None:
    """Refuse ``path`` when it is a non-empty directory without :data:`MARKER` (or not a
    directory at all); a missing or empty directory, or one with the marker, passes."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise UnmanagedDirectoryError(
            f"{path}: exists and is not a directory this project manages; choose another path"
        )
    if (path / MARKER).is_file() or next(os.scandir(path), None) is None:
        return
    raise UnmanagedDirectoryError(
        f"{path}: not empty and not written by this project (no {MARKER} file in it); "
        "refusing to replace or write into it: choose another path, or empty it yourself (an "
        f"output of this project from before the marker: `touch {path / MARKER}`)"
    )


def mark_managed(path: str | Path) -> Path:
    """Write :data:`MARKER` into the directory ``path``; return ``path``."""
    path = Path(path)
    (path / MARKER).write_text(_MARKER_TEXT)
    return path


def claim_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) or check an existing one (:func:`check_managed`), and mark
    it as this project's; return it. Call before writing into a directory the project owns."""
    path = Path(path)
    check_managed(path)
    path.mkdir(parents=True, exist_ok=True)
    return mark_managed(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _commit(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto ``path``. A directory cannot be renamed onto a non-empty one, so an
    existing tree is first renamed aside (to a temporary name), then removed; only a tree that
    carries the marker (or is empty) is replaced, and the new tree gets the marker."""
    if tmp.is_dir():
        mark_managed(tmp)
        check_managed(path)
    if not (tmp.is_dir() and path.is_dir() and not path.is_symlink()):
        os.replace(tmp, path)
        return
    old = temp_sibling(path)
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


@contextmanager
def atomic_path(path: str | Path, *, extension: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; create a file or a directory tree there.

    On a normal exit it is renamed onto ``path`` (replacing a file or a whole tree); on an
    exception it is removed and ``path`` is left as it was. The parent directory is created.
    A file is replaced in one rename; an existing tree takes two (old aside, new in), so for
    that instant ``path`` is absent, never half-written. A tree replaces only an existing
    directory this project wrote (:func:`check_managed`: checked before and at the rename).
    """
    path = Path(path)
    if path.is_dir():
        check_managed(path)  # before any work: a refused target costs nothing
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, extension)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{path}: nothing was written to its temporary {tmp.name}")
        _commit(tmp, path)
    finally:
        _remove(tmp)  # only still there if something failed


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(fileobj)`` on a binary temporary file, then rename it onto ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
    return Path(path)


def write_bytes(path: str | Path, data: bytes | bytearray | memoryview) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda fh: fh.write(data))


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def copy_atomic(src: str | Path, dst: str | Path) -> Path:
    """Copy a file (with its metadata) or a directory tree to ``dst``, replacing it whole."""
    src = Path(src)
    with atomic_path(dst) as tmp:
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copy2(src, tmp)
    return Path(dst)


@contextmanager
def scratch_dir(beside: str | Path) -> Iterator[Path]:
    """A temporary directory next to ``beside`` (same filesystem, so its contents can be renamed
    into place), removed on exit; named like every other temporary, so a leftover is found."""
    tmp = temp_sibling(beside)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        _remove(tmp)


def _named_temporaries(root: Path, recursive: bool) -> list[tuple[Path, TempName]]:
    found: list[tuple[Path, TempName]] = []
    pending = [root]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if name := parse_temp_name(entry.name):
                found.append((Path(entry.path), name))
            elif recursive and entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
    return sorted(found, key=lambda item: item[0])


def leftovers(root: str | Path, *, recursive: bool = True) -> list[Path]:
    """Every temporary (file or directory) under ``root``, sorted; temporaries are not entered."""
    return [path for path, _ in _named_temporaries(Path(root), recursive)]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_leftovers(
    root: str | Path, *, recursive: bool = True, min_age_s: float = DAY_S
) -> list[Path]:
    """Remove the temporaries of killed writers under ``root``; return what was removed.

    A temporary is a leftover when it was written on this host by a process that no longer
    exists, or (from any host) when it was last modified more than ``min_age_s`` ago.
    """
    host, now, removed = _host(), time.time(), []
    for path, name in _named_temporaries(Path(root), recursive):
        try:
            age = now - path.lstat().st_mtime
        except FileNotFoundError:  # its writer finished meanwhile
            continue
        dead = name.host == host and not _process_alive(name.pid)
        if dead or age > min_age_s:
            _remove(path)
            removed.append(path)
    return removed
