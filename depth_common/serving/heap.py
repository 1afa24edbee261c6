"""Keep large freed buffers in the process's heap, for a server whose answers are megabytes.

Each v2 answer with ``points`` allocates several buffers of megabytes (the points array, its
bytes, the joined body). Above glibc's mmap threshold each is a fresh ``mmap`` whose pages
fault in and are zeroed again on every request, and a freed block at the top of the heap is
given back once it passes the trim threshold. Measured on a 256 x 512 answer (depth + points,
``to_rest``): 2.5 ms per answer with glibc's defaults, 0.8 ms with both thresholds set, so the
transformer sets them once at start. Setting either one alone turns off glibc's sliding
threshold (2.6 ms with only the mmap threshold, 3.5 ms with only the trim one), hence both.
The cost is memory: up to ``trim_threshold`` bytes of freed heap are kept. It stayed small in
practice: 8 clients, 320 requests for depth + points + confidence, half of them 2 MP photos,
left the transformer at 551 MB resident with the thresholds and 552 MB without (peaks 850 and
828 MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# glibc's <malloc.h> parameter numbers for mallopt().
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's ceiling for the mmap threshold (64-bit)
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024


def keep_large_buffers(
    mmap_threshold: int = MMAP_THRESHOLD_BYTES,
    trim_threshold: int = TRIM_THRESHOLD_BYTES,
    libc_name: str | None = None,
) -> bool:
    """Raise glibc's mmap and trim thresholds; ``False`` where the C library has no
    ``mallopt`` (musl, macOS) or refuses a value, which leaves its defaults in place."""
    if not 0 < mmap_threshold <= trim_threshold:
        raise ValueError(
            f"expected 0 < mmap_threshold <= trim_threshold, got {mmap_threshold}, {trim_threshold}"
        )
    try:
        libc = ctypes.CDLL(libc_name or ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("no mallopt in this C library: malloc thresholds left as they are")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success and 0 on error.
    done = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    done = mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1 and done
    if not done:
        log.warning("mallopt refused the thresholds: malloc thresholds left as they are")
    return done
