"""Compiled (numba) kernels of the sparse L.A.Cosmic engine (:mod:`darkroom.calib.cosmics`).

Each kernel computes what a numpy method of ``_SparseLACosmic`` computes, decision for
decision and bit for bit: the same float32 operations in the same order (a product, a
sum, a square root, a division of float32 values is one correctly rounded float32
operation in both), and medians of odd counts, which are selections (the middle value of
the sorted window) and do not depend on how they are found. The numpy methods stay the
documented reference; ``tests/test_cosmics_compiled.py`` compares both on real and
simulated frames.

Conventions: images are 2-D C-ordered float32 arrays of shape (ny, nx) in electrons
(``clean`` the data minus the sky, ``var`` the variance [electron^2], ``bkg`` the sky
[electron], or a (0, 0) array without a sky model); pixels are 0-based, ``j`` the row and
``i`` the column, and pixel sets are flat (row-major) indices ``j * nx + i``. The kernels
assume finite images: the engine checks that before it uses them (NaN would make the
medians' order matter) and falls back to numpy otherwise.

This module imports numba: it is imported when a frame is first searched for cosmic
rays, never at ``darkroom`` start-up. Compiled code is cached on disk (``cache=True``: a
fresh process loads it); the kernels release the GIL. ``error_model="numpy"``: a division
by zero would give inf or NaN as in numpy (none is reachable: every divisor is floored).
"""

from __future__ import annotations

import numpy as np
from numba import njit

BLOCK = 8  #: side of the pixel blocks of the candidate bound [pixel] (cosmics._BLOCK)
_F0 = np.float32(0.0)
_F2 = np.float32(2.0)
_F4 = np.float32(4.0)
_FLOOR = np.float32(1e-5)  # astroscrappy's floor of the noise variance [electron^2]
_FMIN = np.float32(0.01)  # astroscrappy's floor of the fine-structure ratio denominator


@njit(cache=True, nogil=True, error_model="numpy")
def _cs(a, b):
    """A compare-exchange: ``(min, max)`` of two values (branch-free selects)."""
    return (a, b) if a <= b else (b, a)


# Selection networks (N. Devillard, "Fast median search", after Paeth and Smith): the middle
# output is the median for every input (checked on all 0-1 inputs, which suffices), the same
# value any selection gives.
@njit(cache=True, nogil=True, error_model="numpy")
def _med5(p):
    """Median of ``p[:5]`` by a selection network (7 compare-exchanges; no NaN)."""
    p0, p1, p2, p3, p4 = p[0], p[1], p[2], p[3], p[4]
    p0, p1 = _cs(p0, p1)
    p3, p4 = _cs(p3, p4)
    p0, p3 = _cs(p0, p3)
    p1, p4 = _cs(p1, p4)
    p1, p2 = _cs(p1, p2)
    p2, p3 = _cs(p2, p3)
    p1, p2 = _cs(p1, p2)
    return p2


@njit(cache=True, nogil=True, error_model="numpy")
def _med7(p):
    """Median of ``p[:7]`` by a selection network (13 compare-exchanges; no NaN)."""
    p0, p1, p2, p3, p4, p5, p6 = p[0], p[1], p[2], p[3], p[4], p[5], p[6]
    p0, p5 = _cs(p0, p5)
    p0, p3 = _cs(p0, p3)
    p1, p6 = _cs(p1, p6)
    p2, p4 = _cs(p2, p4)
    p0, p1 = _cs(p0, p1)
    p3, p5 = _cs(p3, p5)
    p2, p6 = _cs(p2, p6)
    p2, p3 = _cs(p2, p3)
    p3, p6 = _cs(p3, p6)
    p4, p5 = _cs(p4, p5)
    p1, p4 = _cs(p1, p4)
    p1, p3 = _cs(p1, p3)
    p3, p4 = _cs(p3, p4)
    return p3


@njit(cache=True, nogil=True, error_model="numpy")
def _med9(p):
    """Median of ``p[:9]`` by a selection network (19 compare-exchanges; no NaN)."""
    p0, p1, p2, p3, p4, p5, p6, p7, p8 = p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]
    p1, p2 = _cs(p1, p2)
    p4, p5 = _cs(p4, p5)
    p7, p8 = _cs(p7, p8)
    p0, p1 = _cs(p0, p1)
    p3, p4 = _cs(p3, p4)
    p6, p7 = _cs(p6, p7)
    p1, p2 = _cs(p1, p2)
    p4, p5 = _cs(p4, p5)
    p7, p8 = _cs(p7, p8)
    p0, p3 = _cs(p0, p3)
    p5, p8 = _cs(p5, p8)
    p4, p7 = _cs(p4, p7)
    p3, p6 = _cs(p3, p6)
    p1, p4 = _cs(p1, p4)
    p2, p5 = _cs(p2, p5)
    p4, p7 = _cs(p4, p7)
    p4, p2 = _cs(p4, p2)
    p6, p4 = _cs(p6, p4)
    p4, p2 = _cs(p4, p2)
    return p4


@njit(cache=True, nogil=True, error_model="numpy")
def _clip(k, n):
    return 0 if k < 0 else (n - 1 if k >= n else k)


@njit(cache=True, nogil=True, error_model="numpy")
def _patch13(src, j, i, out):
    """The 13 x 13 patch of ``src`` centred on row ``j``, column ``i`` (0-based), indices clipped
    to the image (astroscrappy's border convention), into ``out``."""
    ny, nx = src.shape
    for r in range(13):
        jj = _clip(j - 6 + r, ny)
        for c in range(13):
            out[r, c] = src[jj, _clip(i - 6 + c, nx)]


@njit(cache=True, nogil=True, error_model="numpy")
def _fold_blocks(acc, out_row):
    """``out_row[bx]`` = the minimum of ``acc`` over columns bx * BLOCK .. (bx + 1) * BLOCK - 1."""
    nx = acc.size
    for bx in range(out_row.size):
        i0 = bx * BLOCK
        m = acc[i0]
        for i in range(i0 + 1, min(nx, i0 + BLOCK)):
            m = acc[i] if acc[i] < m else m
        out_row[bx] = m


@njit(cache=True, nogil=True, error_model="numpy")
def electrons(img, gain, sky, gain_sky, var, gain_var, clean, var_e, bkg, vmin, bkgmin):
    """The engine's images in electrons from ``img`` [adu], ``sky`` [adu] and ``var`` [adu^2],
    written into ``bkg = sky * gain``, ``var_e = var * gain^2 - bkg``, ``clean = img * gain -
    bkg`` (float32, (ny, nx)) and the :func:`block_min` of ``var_e`` and of ``bkg`` into
    ``vmin`` and ``bkgmin``; returns whether the three images are finite.

    ``gain``, ``gain_sky`` and ``gain_var`` (gain^2) come typed as numpy promotes them with
    the arrays (float32 for a Python float and a float32 array: a float32 product; float64:
    a float64 product rounded to float32), so each product is numpy's. The caller allocates
    the images with numpy (which asks the kernel for huge pages: ~3x fewer page faults).
    """
    ny, nx = img.shape
    acc_v = np.empty(nx, dtype=np.float32)  # column minima over the rows of the block row
    acc_b = np.empty(nx, dtype=np.float32)
    finite = True
    for j in range(ny):
        # one row at a time through 1-D views: the loop vectorises (2-D indexing does not)
        img_r, sky_r, var_r = img[j], sky[j], var[j]
        clean_r, bkg_r, var_e_r = clean[j], bkg[j], var_e[j]
        if j % BLOCK == 0:  # a new block row: its column minima start here
            acc_v[:] = np.inf
            acc_b[:] = np.inf
        acc = _F0
        for i in range(nx):
            b = np.float32(sky_r[i] * gain_sky)
            c = np.float32(img_r[i] * gain) - b
            v = np.float32(var_r[i] * gain_var) - b
            bkg_r[i] = b
            clean_r[i] = c
            var_e_r[i] = v
            acc += (b - b) + (c - c) + (v - v)  # 0 while finite; NaN from an inf or a NaN on
            acc_v[i] = v if v < acc_v[i] else acc_v[i]
            acc_b[i] = b if b < acc_b[i] else acc_b[i]
        if acc != _F0:
            finite = False
        if j % BLOCK == BLOCK - 1 or j == ny - 1:
            _fold_blocks(acc_v, vmin[j // BLOCK])
            _fold_blocks(acc_b, bkgmin[j // BLOCK])
    return finite


@njit(cache=True, nogil=True, error_model="numpy")
def all_finite(a):
    """Whether every value of the 2-D array ``a`` is finite."""
    ny, nx = a.shape
    for j in range(ny):
        acc = np.float32(0.0)
        for i in range(nx):
            acc += a[j, i] - a[j, i]  # 0 for finite values; NaN sticks
        if acc != 0:
            return False
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def block_min(a):
    """Minimum of ``a`` over ``BLOCK`` x ``BLOCK`` pixel blocks (partial blocks at the far edges
    included): shape (ceil(ny / BLOCK), ceil(nx / BLOCK))."""
    ny, nx = a.shape
    nby = (ny + BLOCK - 1) // BLOCK
    nbx = (nx + BLOCK - 1) // BLOCK
    out = np.empty((nby, nbx), dtype=a.dtype)
    acc = np.empty(nx, dtype=a.dtype)
    for by in range(nby):
        j0 = by * BLOCK
        j1 = min(ny, j0 + BLOCK)
        row = a[j0]
        for i in range(nx):
            acc[i] = row[i]
        for j in range(j0 + 1, j1):
            row = a[j]
            for i in range(nx):
                x = row[i]
                acc[i] = x if x < acc[i] else acc[i]
        _fold_blocks(acc, out[by])
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def block_thresholds(vmin, bkgmin, c2sig, safety):
    """(floor, threshold) of each block: ``floor`` the 3x3 minimum (edges repeated) of
    ``vmin + bkgmin`` (``bkgmin`` a (0, 0) array without a sky), the lower bound of
    ``sepmed7(var) + bkg`` [electron^2] over the block; ``threshold = (c2sig *
    sqrt(max(floor, 1e-5))) * safety`` [electron], the candidate bound of its pixels."""
    nby, nbx = vmin.shape
    has_bkg = bkgmin.shape[0] > 0
    b = np.empty((nby, nbx), dtype=np.float32)
    for y in range(nby):
        for x in range(nbx):
            b[y, x] = vmin[y, x] + bkgmin[y, x] if has_bkg else vmin[y, x]
    floor = np.empty((nby, nbx), dtype=np.float32)
    thr = np.empty((nby, nbx), dtype=np.float32)
    for y in range(nby):
        for x in range(nbx):
            m = b[y, x]
            for yy in range(max(0, y - 1), min(nby, y + 2)):
                for xx in range(max(0, x - 1), min(nbx, x + 2)):
                    m = b[yy, xx] if b[yy, xx] < m else m
            floor[y, x] = m
            f = m if m > _FLOOR else _FLOOR
            thr[y, x] = (c2sig * np.sqrt(f)) * safety
    return floor, thr


@njit(cache=True, nogil=True, error_model="numpy")
def _lplus(clean, j, i, ny, nx):
    """astroscrappy's ``L+`` at pixel (j, i) (float32, zeros outside the image): per sub-pixel
    ``((((4v - right) - left) - up) - down)`` clipped at 0, then ``(p00 + p01 + p11 + p10) / 4``."""
    v = clean[j, i] if (0 <= j < ny and 0 <= i < nx) else _F0
    left = clean[j, i - 1] if (0 <= j < ny and 0 <= i - 1 < nx) else _F0
    right = clean[j, i + 1] if (0 <= j < ny and 0 <= i + 1 < nx) else _F0
    down = clean[j - 1, i] if (0 <= j - 1 < ny and 0 <= i < nx) else _F0
    up = clean[j + 1, i] if (0 <= j + 1 < ny and 0 <= i < nx) else _F0
    four = v * _F4
    q = (((four - v) - left) - v) - down  # (0, 0)
    out = q if q > _F0 else _F0
    q = (((four - v) - left) - up) - v  # (0, 1)
    out += q if q > _F0 else _F0
    q = (((four - right) - v) - up) - v  # (1, 1)
    out += q if q > _F0 else _F0
    q = (((four - right) - v) - v) - down  # (1, 0)
    out += q if q > _F0 else _F0
    return out / _F4


@njit(cache=True, nogil=True, error_model="numpy")
def _s_at(clean, var, bkg, j, i, buf, rows):
    """astroscrappy's ``s = L+ / (2 noise)`` at pixel (j, i) (cosmics._exact_s)."""
    ny, nx = clean.shape
    if j < 3 or j >= ny - 3 or i < 3 or i >= nx - 3:
        m5 = var[_clip(j, ny), _clip(i, nx)]
    else:
        for r in range(7):
            for c in range(7):
                buf[c] = var[j - 3 + r, i - 3 + c]
            rows[r] = _med7(buf)
        m5 = _med7(rows)
    if bkg.shape[0] > 0:
        m5 += bkg[_clip(j, ny), _clip(i, nx)]
    m5 = m5 if m5 > _FLOOR else _FLOOR
    # the Laplacian of the 3x3 patch with indices clipped to the image
    jc, ic = _clip(j, ny), _clip(i, nx)
    v = clean[jc, ic]
    left = clean[jc, _clip(i - 1, nx)]
    right = clean[jc, _clip(i + 1, nx)]
    down = clean[_clip(j - 1, ny), ic]
    up = clean[_clip(j + 1, ny), ic]
    four = v * _F4
    q = (((four - v) - left) - v) - down
    lp = q if q > _F0 else _F0
    q = (((four - v) - left) - up) - v
    lp += q if q > _F0 else _F0
    q = (((four - right) - v) - up) - v
    lp += q if q > _F0 else _F0
    q = (((four - right) - v) - v) - down
    lp += q if q > _F0 else _F0
    lp = lp / _F4
    return lp / (_F2 * np.sqrt(m5))


@njit(cache=True, nogil=True, error_model="numpy")
def exact_s(flat, clean, var, bkg):
    """``s`` at the flat indices ``flat`` (float32; cosmics._exact_s)."""
    nx = clean.shape[1]
    out = np.empty(flat.size, dtype=np.float32)
    buf = np.empty(7, dtype=np.float32)
    rows = np.empty(7, dtype=np.float32)
    for k in range(flat.size):
        out[k] = _s_at(clean, var, bkg, flat[k] // nx, flat[k] % nx, buf, rows)
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _upper_bound(clean, j, i, ny, nx):
    """The L+ upper bound ``((v + v) - min(left, right)) - min(down, up)`` at (j, i) [electron],
    zeros outside the image (cosmics._candidates_full)."""
    v = clean[j, i]
    left = clean[j, i - 1] if i > 0 else _F0
    right = clean[j, i + 1] if i < nx - 1 else _F0
    down = clean[j - 1, i] if j > 0 else _F0
    up = clean[j + 1, i] if j < ny - 1 else _F0
    th = left if left <= right else right
    tv = down if down <= up else up
    return ((v + v) - th) - tv


@njit(cache=True, nogil=True, error_model="numpy")
def candidates_full(clean, var, bkg, thr, mask, sigclip):
    """Flat indices (ascending) of the candidates of the whole frame: pixels whose L+ upper
    bound exceeds their block's threshold ``thr``, not in ``mask``, at least 3 pixels from
    the border and whose exact ``s`` exceeds ``sigclip`` (cosmics._candidates_full with
    cosmics._filter_candidates)."""
    ny, nx = clean.shape
    out = np.empty(4096, dtype=np.int64)
    n = 0
    buf = np.empty(7, dtype=np.float32)
    rows = np.empty(7, dtype=np.float32)
    ub = np.empty(nx, dtype=np.float32)
    tr = np.empty(nx, dtype=np.float32)
    hits = np.empty(nx, dtype=np.int64)
    for j in range(ny):
        if j % BLOCK == 0:
            thr_r = thr[j // BLOCK]
            for i in range(nx):
                tr[i] = thr_r[i // BLOCK]
        # the interior of the row through 1-D views (vectorised), then its two ends
        if 0 < j < ny - 1:
            row, row_d, row_u = clean[j], clean[j - 1], clean[j + 1]
            for i in range(1, nx - 1):
                v = row[i]
                left = row[i - 1]
                right = row[i + 1]
                down = row_d[i]
                up = row_u[i]
                th = left if left <= right else right
                tv = down if down <= up else up
                ub[i] = ((v + v) - th) - tv
            ub[0] = _upper_bound(clean, j, 0, ny, nx)
            ub[nx - 1] = _upper_bound(clean, j, nx - 1, ny, nx)
        else:
            for i in range(nx):
                ub[i] = _upper_bound(clean, j, i, ny, nx)
        mask_r = mask[j]
        k = 0  # the row's candidates, gathered first: no array is re-bound in the pixel loop
        for i in range(nx):
            if ub[i] > tr[i]:
                if mask_r[i] or j < 3 or j >= ny - 3 or i < 3 or i >= nx - 3:
                    continue
                if _s_at(clean, var, bkg, j, i, buf, rows) > sigclip:
                    hits[k] = j * nx + i
                    k += 1
        if k:
            if n + k > out.size:
                grown = np.empty(max(2 * out.size, n + k), dtype=np.int64)
                grown[:n] = out[:n]
                out = grown
            out[n : n + k] = hits[:k]
            n += k
    return out[:n].copy()


@njit(cache=True, nogil=True, error_model="numpy")
def candidates_at(zone, clean, var, bkg, thr, mask, sigclip):
    """:func:`candidates_full` restricted to the flat indices ``zone`` (ascending; the result
    keeps their order: cosmics._candidates_zone)."""
    ny, nx = clean.shape
    out = np.empty(zone.size, dtype=np.int64)
    n = 0
    buf = np.empty(7, dtype=np.float32)
    rows = np.empty(7, dtype=np.float32)
    for k in range(zone.size):
        j = zone[k] // nx
        i = zone[k] % nx
        if zone[k] < 0 or j >= ny:  # no bounds checks below: refuse
            raise ValueError("candidates_at: a pixel outside the image")
        if _upper_bound(clean, j, i, ny, nx) > thr[j // BLOCK, i // BLOCK]:
            if mask[j, i] or j < 3 or j >= ny - 3 or i < 3 or i >= nx - 3:
                continue
            if _s_at(clean, var, bkg, j, i, buf, rows) > sigclip:
                out[n] = zone[k]
                n += 1
    return out[:n].copy()


@njit(cache=True, nogil=True, error_model="numpy")
def exact_sp(flat, clean, var, bkg):
    """``(sp, noise)`` at the flat indices ``flat`` (pixels at least 3 from the border):
    ``sp = s - sepmed7(s)`` at the pixel and its noise ``sqrt(max(sepmed7(var) + bkg, 1e-5))``
    [electron], float32 (cosmics._exact_sp with cosmics._noise7)."""
    ny, nx = clean.shape
    has_bkg = bkg.shape[0] > 0
    n = flat.size
    sp = np.empty(n, dtype=np.float32)
    nc = np.empty(n, dtype=np.float32)
    cv = np.empty((13, 13), dtype=np.float32)
    rowmed = np.empty((13, 7), dtype=np.float32)
    s = np.empty((7, 7), dtype=np.float32)
    buf = np.empty(7, dtype=np.float32)
    rows = np.empty(7, dtype=np.float32)
    for k in range(n):
        j = flat[k] // nx
        i = flat[k] % nx
        _patch13(var, j, i, cv)
        for r in range(13):
            for c in range(7):
                for t in range(7):
                    buf[t] = cv[r, c + t]
                rowmed[r, c] = _med7(buf)
        for a in range(7):
            y = j - 3 + a
            for b in range(7):
                x = i - 3 + b
                if y < 3 or y >= ny - 3 or x < 3 or x >= nx - 3:
                    m5 = cv[3 + a, 3 + b]
                else:
                    for t in range(7):
                        buf[t] = rowmed[a + t, b]
                    m5 = _med7(buf)
                if has_bkg:
                    m5 += bkg[_clip(y, ny), _clip(x, nx)]
                m5 = m5 if m5 > _FLOOR else _FLOOR
                noise = np.sqrt(m5)
                if a == 3 and b == 3:
                    nc[k] = noise
                s[a, b] = _lplus(clean, y, x, ny, nx) / (_F2 * noise)
        for a in range(7):
            for b in range(7):
                buf[b] = s[a, b]
            rows[a] = _med7(buf)
        sp[k] = s[3, 3] - _med7(rows)
    return sp, nc


@njit(cache=True, nogil=True, error_model="numpy")
def exact_f(flat, noise_c, clean):
    """astroscrappy's fine-structure denominator ``f = max((f5 - sepmed9(f5)) / noise, 0.01)``
    at the flat indices ``flat``, ``f5 = sepmed5(clean)`` with astroscrappy's border
    conventions and ``noise_c`` the pixels' noise [electron] (cosmics._exact_f)."""
    ny, nx = clean.shape
    n = flat.size
    out = np.empty(n, dtype=np.float32)
    cl = np.empty((13, 13), dtype=np.float32)
    rowmed = np.empty((13, 9), dtype=np.float32)
    f5 = np.empty((9, 9), dtype=np.float32)
    buf = np.empty(9, dtype=np.float32)
    rows = np.empty(9, dtype=np.float32)
    for k in range(n):
        j = flat[k] // nx
        i = flat[k] % nx
        _patch13(clean, j, i, cl)
        for r in range(13):
            for c in range(9):
                for t in range(5):
                    buf[t] = cl[r, c + t]
                rowmed[r, c] = _med5(buf)
        for a in range(9):
            y = j - 4 + a
            for b in range(9):
                x = i - 4 + b
                if y < 2 or y >= ny - 2 or x < 2 or x >= nx - 2:
                    f5[a, b] = cl[2 + a, 2 + b]
                else:
                    for t in range(5):
                        buf[t] = rowmed[a + t, b]
                    f5[a, b] = _med5(buf)
        f5c = f5[4, 4]
        if j < 4 or j >= ny - 4 or i < 4 or i >= nx - 4:
            m7 = f5c
        else:
            for a in range(9):
                for b in range(9):
                    buf[b] = f5[a, b]
                rows[a] = _med9(buf)
            m7 = _med9(rows)
        f = (f5c - m7) / noise_c[k]
        out[k] = _FMIN if f < _FMIN else f
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def clean_means(idx, clean, var, crmask, mask):
    """astroscrappy's masked 5x5 mean at the flat indices ``idx`` (pixels at least 2 from the
    border): ``(data, var, count)``, float32 sums of the usable (neither flagged in ``crmask``
    nor in ``mask``) pixels in row-major order divided by their count; NaN where none is
    usable (cosmics._clean)."""
    ny, nx = clean.shape
    n = idx.size
    new_d = np.empty(n, dtype=np.float32)
    new_v = np.empty(n, dtype=np.float32)
    cnt = np.empty(n, dtype=np.float32)
    for k in range(n):
        j = idx[k] // nx
        i = idx[k] % nx
        if j < 2 or j >= ny - 2 or i < 2 or i >= nx - 2:  # no bounds checks below: refuse
            raise ValueError("clean_means: a pixel within 2 of the border")
        sd = _F0
        sv = _F0
        c = 0
        for a in range(-2, 3):
            for b in range(-2, 3):
                if crmask[j + a, i + b] or mask[j + a, i + b]:
                    sd += _F0
                    sv += _F0
                else:
                    sd += clean[j + a, i + b]
                    sv += var[j + a, i + b]
                    c += 1
        cf = np.float32(c)
        cnt[k] = cf
        if c:
            new_d[k] = sd / cf
            new_v[k] = sv / cf
        else:
            new_d[k] = np.float32(np.nan)
            new_v[k] = np.float32(np.nan)
    return new_d, new_v, cnt


@njit(cache=True, nogil=True, error_model="numpy")
def zone(changed, marks):
    """Flat indices (ascending) of the pixels within 6 (Chebyshev) of a pixel of ``changed``
    (cosmics._zone); ``marks`` a (ny, nx) array of False (numpy's zeros: pages never touched
    cost nothing). Only the marked span of each row is scanned back."""
    ny, nx = marks.shape
    lo = np.full(ny, nx, dtype=np.int64)  # first and last marked column of each row
    hi = np.full(ny, -1, dtype=np.int64)
    n = 0
    for k in range(changed.size):
        j = changed[k] // nx
        i = changed[k] % nx
        x0 = max(0, i - 6)
        x1 = min(nx, i + 7)
        for y in range(max(0, j - 6), min(ny, j + 7)):
            row = marks[y]
            for x in range(x0, x1):
                if not row[x]:
                    row[x] = True
                    n += 1
            lo[y] = min(lo[y], x0)
            hi[y] = max(hi[y], x1 - 1)
    out = np.empty(n, dtype=np.int64)
    m = 0
    for y in range(ny):
        row = marks[y]
        for x in range(lo[y], hi[y] + 1):
            if row[x]:
                out[m] = y * nx + x
                m += 1
    return out
