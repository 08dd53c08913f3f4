"""glibc's allocator set for a process that makes and frees many frame-sized arrays.

A 1k x 1k frame's steps each make 4-8 MB temporaries. glibc serves them from its heap once
its dynamic mmap threshold has grown past them, but returns the heap's free top to the system
as soon as it exceeds twice that threshold (16-64 MB), so every frame faults its pages in anew.
Freed memory is kept up to :data:`TRIM_MIB` instead, and arrays under :data:`MMAP_MIB` come from
the heap: on the ARCSAT night (serial ``darkroom run``) 30 % fewer page faults (177k -> 124k) and
less system CPU (1.8-2.1 -> 1.6-1.7 s; wall 17.1 and 16.0 -> 16.0 and 15.6 s, alternated), for
~60 MB more resident memory (613 -> 670 MB); that wall gain is within the machine's noise. On the
simulated night of ``darkroom demo`` (36 frames of 512 x 512): page faults 140k -> 80k, the same
resident memory and wall time (14.7-14.8 s either way). Linux with glibc only; a setting of the user's
(``MALLOC_*_`` variables, ``GLIBC_TUNABLES``) is kept.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory", "one_heap"]

#: arrays up to this size come from the heap, not from a mapping of their own [MiB]
MMAP_MIB = 64
#: free memory at the heap's top kept for the next frames, not returned to the system [MiB]
TRIM_MIB = 256
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (:data:`MMAP_MIB`, :data:`TRIM_MIB`) for this process
    and the processes it forks; True when set."""
    if not sys.platform.startswith("linux"):
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")) or "malloc" in (
        os.environ.get("GLIBC_TUNABLES") or ""
    ):
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_MIB << 20)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_MIB << 20)
    )


def one_heap() -> bool:
    """Every thread of this process (and of the processes it forks) allocates from glibc's main
    heap, the one :func:`keep_freed_memory` keeps freed memory in; True when set. Call it while
    the process has one thread (a fork server's preload): glibc fixes its number of heaps
    (arenas) when a second thread first allocates.

    For a Dask worker, whose batches may run on a new thread of its pool
    (:func:`darkroom.pipeline.executors._free_worker_slot`): a thread with a heap of its own
    gives its freed frame-sized arrays back to the system and faults their pages in again.
    ARCSAT night, calibrate on 2 workers handing batches over: ~18,000 page faults a worker
    without this, 250-4,900 with it (250-4,900 too when every batch ran on one thread). A
    worker's threads make few large allocations, so they hardly wait for the heap's lock.
    Linux with glibc only; a setting of the user's (``MALLOC_ARENA_MAX``, ``GLIBC_TUNABLES``) is kept.
    """
    if not sys.platform.startswith("linux"):
        return False
    if "MALLOC_ARENA_MAX" in os.environ or "malloc" in (os.environ.get("GLIBC_TUNABLES") or ""):
        return False
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(_M_ARENA_MAX, 1))


def _mallopt():
    """glibc's ``mallopt(param, value)`` (C ints), or None where the C library has none (musl)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt
