"""Compiled kernels of :mod:`darkroom.detect.background` and :mod:`darkroom.detect.extract`: the
frame passes around sep's calls (numba).

Imported by :func:`darkroom.detect.background.pixel_masks` and
:func:`darkroom.detect.extract.detect_sources` when they first run (numba is not imported with
:mod:`darkroom.detect`, nor at the CLI's start-up). Compiled on first use and cached on disk
(``cache=True``); the GIL is released. They replace several numpy passes over a frame (and
their full-frame temporaries) by one, with the same results bit for bit: the numpy versions are
kept as the reference in ``tests/test_detect_compiled.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["bit_plane", "scan_frame", "subtract_zeroed"]


@njit(cache=True, nogil=True, error_model="numpy")
def scan_frame(
    bits: np.ndarray, exponent: np.integer, mask: np.ndarray, b0: np.integer, b1: np.integer, b2: np.integer
) -> tuple[int, int, int, int]:
    """The number of the image's non-finite values and of the MASK pixels with ``b0``, ``b1``,
    ``b2`` set, in one vectorised pass.

    ``bits`` is the raveled C-contiguous image seen as unsigned integers of its width (``uint32``
    for float32, ``uint64`` for float64) and ``exponent`` the mask of its exponent field: a value
    is inf or NaN when every exponent bit is set. ``mask`` is the raveled unsigned MASK plane and
    ``b0, b1, b2`` bits of its type.
    """
    n_nonfinite = 0
    for i in range(bits.size):
        n_nonfinite += (bits[i] & exponent) == exponent
    c0 = 0
    c1 = 0
    c2 = 0
    for i in range(mask.size):
        m = mask[i]
        c0 += (m & b0) != 0
        c1 += (m & b1) != 0
        c2 += (m & b2) != 0
    return n_nonfinite, c0, c1, c2


@njit(cache=True, nogil=True, error_model="numpy")
def bit_plane(mask: np.ndarray, b: np.integer, out: np.ndarray) -> None:
    """``out = mask & b != 0`` (raveled; ``b`` of the mask's type)."""
    for i in range(mask.size):
        out[i] = (mask[i] & b) != 0


@njit(cache=True, nogil=True, error_model="numpy")
def subtract_zeroed(arr: np.ndarray, level: np.ndarray, bad: np.ndarray, out: np.ndarray) -> None:
    """``out = arr - level`` with 0 where ``bad`` (1-D, raveled frames; ``out`` of the type
    numpy gives ``arr - level``)."""
    for i in range(arr.size):
        out[i] = 0.0 if bad[i] else arr[i] - level[i]
