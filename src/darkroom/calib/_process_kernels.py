"""Compiled (numba) kernel of :func:`darkroom.calib.process.calibrate_frame`'s full-frame steps.

:func:`remove_signature` does, pixel by pixel in one pass, what the numpy reference
(``process._remove_signature_numpy``) does in a dozen passes over the frame: bias
subtraction, the Poisson + read-noise variance, the scaled dark and its variance, the bias
variance, the NO_DATA test, the flat division with its variance, and the BAD / SAT /
NO_DATA bits of the MASK plane. Bit for bit the same: each float32 operation of the
reference (a subtraction, a product, a sum, a division of float32 values, one correctly
rounded float32 operation in both) in the same order, no fused multiply-add (numba
emits none without ``fastmath``).

Conventions: the images are 1-D (row-major, flattened) C-ordered views of (ny, nx) frames,
pixel ``p = j * nx + i`` (0-based row ``j``, column ``i``); ``sci`` [adu] and ``var``
[adu^2] float32, the masters' planes float32 [adu, adu^2; the flat and its square
dimensionless], masks bool (``reasons`` uint8, nonzero = bad). A master that is not used is a
0-length array with its flag False, so that one compiled signature serves every frame.

This module imports numba: it is imported when a frame is first calibrated, never at
``darkroom`` start-up. Compiled code is cached on disk (``cache=True``: a fresh process loads
it); the kernel releases the GIL. ``error_model="numpy"``: a division by zero gives inf or
NaN as in numpy.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_F0 = np.float32(0.0)
_NAN = np.float32(np.nan)
_CHUNK = 1024  # pixels a step of remove_signature takes at a time (its buffers stay in L1)


@njit(cache=True, nogil=True, error_model="numpy")
def _poisson_read(s, inv_gain, rn2):
    """:func:`darkroom.calib.variance.poisson_read_variance` of one pixel: ``max(s, 0) *
    inv_gain + rn2`` [adu^2] (``s`` [adu], ``inv_gain`` [adu/e], ``rn2`` [adu^2], float32);
    ``np.maximum``'s NaN (a NaN ``s`` stays NaN)."""
    m = s if (s >= _F0 or s != s) else _F0
    return m * inv_gain + rn2


@njit(cache=True, nogil=True, error_model="numpy")
def remove_signature(
    sci,
    var,
    mask,
    nodata,
    bad,
    bias,
    bias_var,
    bias_var_k,
    dark,
    dark_k,
    dark_var,
    dark_var_k,
    inv_gain,
    rn2,
    sky_level,
    flat,
    flat_var,
    flat_sq,
    no_response,
    reasons,
    saturated,
    flags,
    bits,
):
    """One pass over a frame; returns ``(n_nodata, n_bad)`` [pixels].

    ``sci`` (in: raw minus overscan [adu]; out: calibrated, NaN where NO_DATA) and ``var``
    (out, [adu^2]) float32, ``mask`` (out, int32 bits), ``nodata`` and ``bad`` (out, bool).
    ``flags`` (bool): ``[0]`` bias (``sci -= bias``, then ``var = max(sci, 0) * inv_gain +
    rn2``), ``[1]`` dark (``sci -= dark`` or ``dark * dark_k`` with ``[2]``; ``var`` as above
    when no bias; ``var += dark_var`` or ``dark_var * dark_var_k`` with ``[2]``), ``[3]`` the
    bias variance (``var += bias_var * bias_var_k``), ``[4]`` flat (``sci /= flat``, then
    ``var = (var + sci^2 * flat_var) / flat_sq``, ``flat_var`` with ``[5]``), ``[6]``
    ``no_response`` (bad), ``[7]`` ``reasons`` (bad where nonzero), ``[8]`` the empirical sky
    model (without bias and dark: ``var = max(sci - sky_level, 0) * inv_gain + rn2``, ``rn2``
    then the sky noise squared). ``inv_gain`` [adu/e], ``rn2`` [adu^2], ``sky_level`` [adu],
    ``dark_k``, ``dark_var_k``, ``bias_var_k`` float32 factors. ``bits``
    (int32): NO_DATA, BAD, SAT. NO_DATA: ``sci`` not finite before the flat division; those
    pixels are not BAD, and get NaN in ``sci`` and ``var``.
    """
    has_bias, has_dark, dark_scaled, add_bias_var = flags[0], flags[1], flags[2], flags[3]
    has_flat, has_flat_var, has_no_resp, has_reasons = flags[4], flags[5], flags[6], flags[7]
    has_sky = flags[8]
    b_nodata, b_bad, b_sat = bits[0], bits[1], bits[2]
    n_nodata = 0
    n_bad = 0
    # A chunk of pixels at a time, each step a loop of its own with the masters' flags tested
    # outside it: the loops have no branch on the flags, and the compiler vectorises them (the
    # same float32 operations per pixel, in the same order, as one pixel at a time).
    s = np.empty(_CHUNK, np.float32)
    v = np.empty(_CHUNK, np.float32)
    nd = np.empty(_CHUNK, np.bool_)
    b = np.empty(_CHUNK, np.bool_)
    for start in range(0, sci.size, _CHUNK):
        m = min(_CHUNK, sci.size - start)
        end = start + m
        # views of the chunk, indexed from 0 (the compiler then knows no index is negative; an
        # unused master is 0-length, and so is its view)
        sci_c = sci[start:end]
        bias_c = bias[start:end]
        dark_c = dark[start:end]
        dark_var_c = dark_var[start:end]
        bias_var_c = bias_var[start:end]
        flat_c = flat[start:end]
        flat_var_c = flat_var[start:end]
        flat_sq_c = flat_sq[start:end]
        no_response_c = no_response[start:end]
        reasons_c = reasons[start:end]
        saturated_c = saturated[start:end]
        var_c = var[start:end]
        mask_c = mask[start:end]
        nodata_c = nodata[start:end]
        bad_c = bad[start:end]
        for i in range(m):
            s[i] = sci_c[i]
            v[i] = _F0
        if has_bias:
            for i in range(m):
                t = s[i] - bias_c[i]
                s[i] = t
                v[i] = _poisson_read(t, inv_gain, rn2)
        if has_dark:
            if dark_scaled:
                for i in range(m):
                    s[i] = s[i] - dark_c[i] * dark_k
            else:
                for i in range(m):
                    s[i] = s[i] - dark_c[i]
            if not has_bias:
                for i in range(m):
                    v[i] = _poisson_read(s[i], inv_gain, rn2)
            if dark_scaled:
                for i in range(m):
                    v[i] = v[i] + dark_var_c[i] * dark_var_k
            else:
                for i in range(m):
                    v[i] = v[i] + dark_var_c[i]
        if not has_bias and not has_dark:
            if has_sky:
                for i in range(m):
                    v[i] = _poisson_read(s[i] - sky_level, inv_gain, rn2)
            else:
                for i in range(m):
                    v[i] = _poisson_read(s[i], inv_gain, rn2)
        if add_bias_var:
            for i in range(m):
                v[i] = v[i] + bias_var_c[i] * bias_var_k
        for i in range(m):
            nd[i] = not np.isfinite(s[i])
            b[i] = False
        if has_flat:
            for i in range(m):
                s[i] = s[i] / flat_c[i]
            if has_flat_var:
                for i in range(m):
                    t = s[i] * s[i]
                    t = t * flat_var_c[i]
                    v[i] = v[i] + t
            for i in range(m):
                v[i] = v[i] / flat_sq_c[i]
            if has_no_resp:
                for i in range(m):
                    b[i] = no_response_c[i]
        if has_reasons:
            for i in range(m):
                b[i] = b[i] or reasons_c[i] != 0
        for i in range(m):
            ndi = nd[i]
            bi = b[i] and not ndi
            bits_p = np.int32(0)
            if ndi:
                bits_p |= b_nodata
            if bi:
                bits_p |= b_bad
            if saturated_c[i]:
                bits_p |= b_sat
            sci_c[i] = _NAN if ndi else s[i]
            var_c[i] = _NAN if ndi else v[i]
            mask_c[i] = bits_p
            nodata_c[i] = ndi
            bad_c[i] = bi
            n_nodata += ndi
            n_bad += bi
    return n_nodata, n_bad


@njit(cache=True, nogil=True, error_model="numpy")
def weighted_sums(img, flat, use, weight, out):
    """:func:`darkroom.calib.interp._weighted_sums` of one image without gathering it first.

    ``img`` the image, flattened (float32); ``flat`` (offsets, pixels) flat indices of each
    pixel's neighbours (intp), ``use`` (offsets, pixels) bool, ``weight`` (offsets,) the
    offsets' inverse-square-distance weights rounded to float32 [1/pixel^2]. ``out`` (pixels,)
    float64 receives, offset by offset in order, ``float64(weight * pixel)`` (a float32
    product), or 0 where the neighbour is not usable: the numpy additions in their order.
    """
    n_off, n_pix = flat.shape
    for t in range(n_pix):
        out[t] = 0.0
    for k in range(n_off):
        w = weight[k]
        for t in range(n_pix):
            p = w * img[flat[k, t]] if use[k, t] else _F0
            out[t] += np.float64(p)
    return out
