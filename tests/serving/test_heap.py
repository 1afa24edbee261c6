"""keep_large_buffers: glibc's malloc thresholds for the transformer's multi-MB answers."""

from __future__ import annotations

import platform
from types import SimpleNamespace

import pytest

from depth_common.serving import heap


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_both_thresholds() -> None:
    assert heap.keep_large_buffers() is True


def test_a_c_library_that_cannot_be_loaded_leaves_the_defaults() -> None:
    assert heap.keep_large_buffers(libc_name="libno-such-c-library.so.9") is False


class _Mallopt:
    """mallopt's C signature, answering ``result`` and keeping what it was asked."""

    def __init__(self, result: int) -> None:
        self.result, self.calls = result, []

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


@pytest.mark.parametrize(("result", "kept"), [(1, True), (0, False)])
def test_both_thresholds_are_asked_for_and_a_refusal_is_reported(
    monkeypatch: pytest.MonkeyPatch, result: int, kept: bool
) -> None:
    mallopt = _Mallopt(result)
    monkeypatch.setattr(heap.ctypes, "CDLL", lambda name: SimpleNamespace(mallopt=mallopt))
    assert heap.keep_large_buffers(mmap_threshold=8 << 20, trim_threshold=16 << 20) is kept
    assert mallopt.calls == [(heap.M_MMAP_THRESHOLD, 8 << 20), (heap.M_TRIM_THRESHOLD, 16 << 20)]


def test_a_c_library_without_mallopt_leaves_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap.ctypes, "CDLL", lambda name: SimpleNamespace())
    assert heap.keep_large_buffers() is False


def test_thresholds_out_of_order_are_refused() -> None:
    with pytest.raises(ValueError, match="mmap_threshold <= trim_threshold"):
        heap.keep_large_buffers(mmap_threshold=2 << 20, trim_threshold=1 << 20)
