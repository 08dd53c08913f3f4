"""Compiled (numba) kernels of :mod:`darkroom.skymesh`: SExtractor's mesh background as sep
(1.4.1, ``src/background.c``) computes it, operation for operation.

The estimator, per mesh of ``bw x bh`` pixels (the last column / row of meshes narrower /
lower when the image is not a multiple of the box): the mean and standard deviation of the
unmasked pixels above -1e30 (double sums, row by row), a mesh with fewer than half its
pixels valid is bad; the same again over the pixels within mean +- 2 sigma (the cuts
rounded to float32); a histogram of ``min(int(0.997 * n + 1), 4096)`` bins over mean +- 5
sigma; SExtractor's iterated 3-sigma clipped mode estimate on the histogram (``backguess``:
up to 100 iterations of a median by a two-ended walk, the mean and sigma of the bins within
the cuts). Then bad meshes take the mean of their nearest valid meshes, a median filter of
``fw x fh`` meshes (shrunk symmetrically at the edges) replaces a mesh whose median differs
by at least ``fthresh``, the global values are the medians of the filtered meshes, and the
maps are natural bicubic splines through the mesh centres (y first, then x on each row).

Bit for bit: float32 values where sep has ``float`` and float64 where it has ``double``,
each operation in sep's order (numba emits no fused multiply-add without ``fastmath``); each
mesh's double sums run over its pixels row by row as sep's do. Changes of method, not of
result: (1) the histogram's sums over the bins within the cuts (counts, counts x bin,
counts x bin^2) are exact integers in sep's double sums (below 2^53 for meshes of fewer than
2^29 pixels), so they are read from prefix sums made once per mesh instead of a pass over
the bins per iteration (~5 iterations per 64 x 64 mesh on the ARCSAT frames, the first over ~4000 bins);
(2) the median walk (the low end takes the next bin while its sum is below the high end's,
else the high end does) is a merge of the two ends' cumulative sums, whose stop is found by
bisection on the prefix sums; (3) a pixel left out of a sum adds +0.0 instead of being
skipped (no branch; a sum that starts at +0.0 is never -0.0, so +0.0 leaves it unchanged);
(4) the maps' per-column interpolation factors, which sep recomputes on every row from the
same float32 steps, are computed once.

Conventions: images are 2-D C-ordered ``(ny, nx)`` float32 arrays, masks bool (True =
left out; a 0 x 0 array when there is none). Mesh arrays are ``(nby, nbx)`` float32.
This module imports numba: it is imported when a frame's background is first measured,
never at ``darkroom`` start-up. ``cache=True``; the kernels release the GIL.
``error_model="numpy"``: a division by zero gives inf or NaN, as in C.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_BIG = 1e30  # sep's BIG (double)
_F_MINUS_BIG = np.float32(-1e30)  # -BIG stored in a float (a bad mesh's value)
#: the largest float32 not above -BIG (a double): ``pix > -BIG`` is ``pix > this`` for a float32
_F_MINUS_BIG_EXCL = (
    np.float32(-1e30)
    if np.float64(np.float32(-1e30)) <= -1e30
    else np.nextafter(np.float32(-1e30), np.float32(-np.inf))
)
_NSIGMA = 5  # QUANTIF_NSIGMA: histogram limits [sigma]
_NMAXLEVELS = 4096  # QUANTIF_NMAXLEVELS
_STEP = math.sqrt(2.0 / math.pi) * _NSIGMA / 4  # sqrt(2/PI) * QUANTIF_NSIGMA / QUANTIF_AMIN
_EPS = 1e-4
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F2 = np.float32(2.0)
_F4 = np.float32(4.0)
_F6 = np.float32(6.0)


@njit(cache=True, nogil=True, error_model="numpy")
def _median_sorted(a, n):
    """sep's ``fqmedian`` of the sorted float32 values ``a[:n]``: the middle one, or the
    float32 sum of the two middle ones halved."""
    if n < 2:
        return a[0]
    if n & 1:
        return a[n // 2]
    return (a[n // 2 - 1] + a[n // 2]) / _F2


@njit(cache=True, nogil=True, error_model="numpy")
def _median_small(buf, n):
    """fqmedian of ``buf[:n]`` (float32, reordered): insertion sort of a filter window."""
    for i in range(1, n):
        v = buf[i]
        j = i - 1
        while j >= 0 and buf[j] > v:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = v
    return _median_sorted(buf, n)


@njit(cache=True, nogil=True, error_model="numpy")
def _count_high(cum, top, s, v):
    """The high end's steps that come before a low-end sum ``v`` in the walk: the number of
    ``m`` in ``[0, s)`` with ``cum[top] - cum[top - m] <= v`` (nondecreasing in ``m``)."""
    lo, hi = 0, s
    while lo < hi:
        mid = (lo + hi) // 2
        if cum[top] - cum[top - mid] <= v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True, error_model="numpy")
def _walk(cum, lcut, hcut):
    """Where sep's two-ended median walk over the bins ``lcut..hcut`` stops: the number of
    bins the low end took (``k``; the high end took the rest). The low end takes bin
    ``lcut + k`` while its sum ``l_k`` is below the high end's ``r_m``, else the high end
    takes one: a merge of the nondecreasing sequences ``l`` and ``r`` (ties to ``r``), in
    which ``l_k`` comes at step ``k + #{m: r_m <= l_k}``; ``k`` is the number of those steps
    below the walk's length."""
    s = hcut - lcut + 1
    top = hcut + 1
    lo, hi = 0, s
    while lo < hi:  # the first k whose step is not below s
        mid = (lo + hi) // 2
        if mid + _count_high(cum, top, s, cum[lcut + mid] - cum[lcut]) < s:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True, error_model="numpy")
def _guess(histo, nlevels, cum0, cum1, cum2, bm_mean, qzero, qscale):
    """sep's ``backguess``: (mode estimate, sigma) [image unit, float32] of one mesh's
    histogram. ``cum0/1/2[i]``: sums of ``histo[:i]``, ``histo[b] * b``, ``histo[b] * b^2``."""
    nlevelsm1 = nlevels - 1
    lcut = 0
    hcut = nlevelsm1
    sig = 10.0 * nlevelsm1
    sig1 = 1.0
    mea = np.float64(bm_mean)
    med = mea
    n = 100
    while True:
        # for (n=100; n-- && (sig>=0.1) && (fabs(sig/sig1-1.0)>EPS);)
        if n == 0:
            break
        n -= 1
        if not (sig >= 0.1):
            break
        if not (abs(sig / sig1 - 1.0) > _EPS):
            break
        sig1 = sig
        mea = 0.0
        sig = 0.0
        total = 0
        if hcut >= lcut:
            k = _walk(cum0, lcut, hcut)
            m = hcut - lcut + 1 - k
            lowsum = cum0[lcut + k] - cum0[lcut]
            highsum = cum0[hcut + 1] - cum0[hcut + 1 - m]
            hilow = lcut + k
            hihigh = hcut - m
            total = cum0[hcut + 1] - cum0[lcut]
            mea = np.float64(cum1[hcut + 1] - cum1[lcut])
            sig = np.float64(cum2[hcut + 1] - cum2[lcut])
        else:  # no bin walked
            lowsum = 0
            highsum = 0
            hilow = lcut
            hihigh = hcut
        if hihigh >= 0:
            a = histo[hilow] if hilow < nlevels else 0
            b = histo[hihigh]
            med = (hihigh + 0.5) + (np.float64(highsum) - np.float64(lowsum)) / (2.0 * (a if a > b else b))
        else:
            med = 0.0
        if total:
            mea /= np.float64(total)
            sig = sig / np.float64(total) - mea * mea
        sig = math.sqrt(sig) if sig > 0.0 else 0.0
        ftemp = med - 3.0 * sig
        lcut = _round_half_away(ftemp) if ftemp > 0.0 else 0
        ftemp = med + 3.0 * sig
        hcut = _round_half_away(ftemp) if ftemp < nlevelsm1 else nlevelsm1
        if lcut < 0 or lcut > nlevels:  # only from a non-finite ftemp (undefined in C): no bin
            lcut = nlevels
        if hcut < -1:
            hcut = -1
    q0 = np.float64(qzero)
    qs = np.float64(qscale)
    # (sep's first test, |sigma / (sig * qscale) - 1| < 0, is never true)
    if not abs(sig) > 0.0:
        mean = q0 + mea * qs
    elif abs((mea - med) / sig) < 0.3:
        mean = q0 + (2.5 * med - 1.5 * mea) * qs
    else:
        mean = q0 + med * qs
    return np.float32(mean), np.float32(sig * qs)


@njit(cache=True, nogil=True, error_model="numpy")
def _round_half_away(f):
    """C's ``(int)(f > 0 ? f + 0.5 : f - 0.5)`` for a double ``f`` (int64; a non-finite ``f``
    maps to the x86 conversion's INT64_MIN)."""
    g = f + 0.5 if f > 0.0 else f - 0.5
    if not (-9.2e18 < g < 9.2e18):
        return np.int64(-9223372036854775807 - 1)
    return np.int64(g)


@njit(cache=True, nogil=True, error_model="numpy")
def _sums(data, mask, use_mask, y0, h, x0, w, lo, hi):
    """sep's ``backstat`` sums over one mesh: (sum of pixels, sum of squares, count) in double,
    row by row, of the unmasked float32 pixels ``p`` with ``lo < p <= hi`` (sep's first pass
    ``pix > -BIG`` is ``lo`` = the float32 at or below -1e30, ``hi`` = inf; its second pass
    ``lcut <= pix <= hcut`` is ``lo`` = the float32 below ``lcut``)."""
    m = 0.0
    sq = 0.0
    n = 0
    for y in range(y0, y0 + h):
        r = data[y, x0 : x0 + w]
        # without a branch: a pixel left out adds +0.0 (a sum that starts at +0.0 never
        # becomes -0.0, so adding +0.0 leaves it as it is)
        if use_mask:
            k = mask[y, x0 : x0 + w]
            for x in range(w):
                p = r[x]
                ok = (p <= hi) & (p > lo) & (not k[x])
                q = np.float64(p) if ok else 0.0
                m += q
                sq += q * q
                n += ok
        else:
            for x in range(w):
                p = r[x]
                ok = (p <= hi) & (p > lo)
                q = np.float64(p) if ok else 0.0
                m += q
                sq += q * q
                n += ok
    return m, sq, n


@njit(cache=True, nogil=True, error_model="numpy")
def mesh_statistics(data, mask, use_mask, bw, bh, back, sigma):
    """Per-mesh background and sigma (sep's ``backstat``, ``backhisto``, ``backguess``) into
    ``back`` and ``sigma`` (``(nby, nbx)`` float32; -1e30 for a bad mesh). ``data`` float32
    ``(ny, nx)``, ``mask`` bool (True = left out) read when ``use_mask``. Each mesh's passes
    follow one another (its pixels stay in the cache)."""
    ny, nx = data.shape
    nby, nbx = back.shape
    histo = np.zeros(_NMAXLEVELS + 1, dtype=np.int64)  # + the bin of the values not counted
    cum0 = np.zeros(_NMAXLEVELS + 1, dtype=np.int64)
    cum1 = np.zeros(_NMAXLEVELS + 1, dtype=np.int64)
    cum2 = np.zeros(_NMAXLEVELS + 1, dtype=np.int64)
    bbuf = np.empty(bw, dtype=np.int32)
    for jb in range(nby):
        y0 = jb * bh
        h = min(bh, ny - y0)
        for ib in range(nbx):
            x0 = ib * bw
            w = min(bw, nx - x0)
            # backstat, first pass: the valid pixels (above -1e30; NaN fails both tests)
            total, sq, npix = _sums(data, mask, use_mask, y0, h, x0, w, _F_MINUS_BIG_EXCL, np.float32(np.inf))
            if np.float32(npix) < np.float32(w * h * 0.5):  # too few: a bad mesh
                back[jb, ib] = _F_MINUS_BIG
                sigma[jb, ib] = _F_MINUS_BIG
                continue
            mean = total / np.float64(npix)
            sv = sq / np.float64(npix) - mean * mean
            sg = math.sqrt(sv) if sv > 0.0 else 0.0
            lcut = np.float32(mean - 2.0 * sg)
            hcut = np.float32(mean + 2.0 * sg)
            # second pass, within the cuts: pix >= lcut is pix > the float32 below lcut
            total, sq, npix = _sums(
                data, mask, use_mask, y0, h, x0, w, np.nextafter(lcut, np.float32(-np.inf)), hcut
            )
            mean = total / np.float64(npix)
            sv = sq / np.float64(npix) - mean * mean
            sg = math.sqrt(sv) if sv > 0.0 else 0.0
            bm_mean = np.float32(mean)
            nlevels = np.int64(_STEP * npix + 1)
            if nlevels > _NMAXLEVELS:
                nlevels = _NMAXLEVELS
            qscale = np.float32(2 * _NSIGMA * sg / nlevels) if sg > 0.0 else _F1
            qzero = np.float32(mean - _NSIGMA * sg)
            # backhisto: (int)(pix / qscale + cste) counted in [0, nlevels); truncation
            # toward zero counts (-1, 0) in bin 0; NaN and out-of-range values are not counted
            cste = np.float32(0.499999 - np.float64(qzero / qscale))
            flev = np.float32(nlevels)
            nl32 = np.int32(nlevels)
            histo[: nlevels + 1] = 0
            bins = bbuf[:w]
            for y in range(y0, y0 + h):
                r = data[y, x0 : x0 + w]
                # the bins first (a loop numba vectorizes), an uncounted value in bin nlevels
                if use_mask:
                    k = mask[y, x0 : x0 + w]
                    for x in range(w):
                        f = r[x] / qscale + cste
                        ok = (f > np.float32(-1.0)) & (f < flev) & (not k[x])
                        bins[x] = np.int32(f if ok else _F0) if ok else nl32
                else:
                    for x in range(w):
                        f = r[x] / qscale + cste
                        ok = (f > np.float32(-1.0)) & (f < flev)
                        bins[x] = np.int32(f if ok else _F0) if ok else nl32
                for x in range(w):
                    histo[bins[x]] += 1
            c0 = 0
            c1 = 0
            c2 = 0
            for i in range(nlevels):
                hv = histo[i]
                c0 += hv
                c1 += hv * i
                c2 += hv * i * i
                cum0[i + 1] = c0
                cum1[i + 1] = c1
                cum2[i + 1] = c2
            b, s = _guess(histo, nlevels, cum0, cum1, cum2, bm_mean, qzero, qscale)
            back[jb, ib] = b
            sigma[jb, ib] = s


@njit(cache=True, nogil=True, error_model="numpy")
def filter_meshes(back, sigma, fw, fh, fthresh):
    """sep's ``filterback``, in place on ``back`` and ``sigma`` (``(nby, nbx)`` float32):
    bad meshes (<= -1e30) replaced by the mean of the nearest valid ones (0 and 1 when none),
    then the ``fw x fh`` median filter where the median differs from the mesh by at least
    ``fthresh`` (float64). Returns (global background, global rms) as float32."""
    nby, nbx = back.shape
    npts = nby * nbx
    bflat = back.ravel()
    sflat = sigma.ravel()
    back2 = np.empty(npts, dtype=np.float32)
    sigma2 = np.empty(npts, dtype=np.float32)
    fbig = np.float32(_BIG)
    for py in range(nby):
        for px in range(nbx):
            i = py * nbx + px
            back2[i] = bflat[i]
            if bflat[i] <= -_BIG:
                d2min = fbig
                nmin = 0
                val = _F0
                sval = _F0
                for y in range(nby):
                    for x in range(nbx):
                        j = y * nbx + x
                        if bflat[j] > -_BIG:
                            d2 = np.float32(x - px) * np.float32(x - px) + np.float32((y - py) * (y - py))
                            if d2 < d2min:
                                val = bflat[j]
                                sval = sflat[j]
                                nmin = 1
                                d2min = d2
                            elif d2 == d2min:
                                val += bflat[j]
                                sval += sflat[j]
                                nmin += 1
                back2[i] = val / np.float32(nmin) if nmin else _F0
                sflat[i] = sval / np.float32(nmin) if nmin else _F1
    bflat[:] = back2
    npx = fw // 2
    npy = fh // 2
    bbuf = np.empty((2 * npx + 1) * (2 * npy + 1), dtype=np.float32)
    sbuf = np.empty_like(bbuf)
    for py in range(nby):
        npy2 = min(npy, nby - py - 1, py)
        for px in range(nbx):
            npx2 = min(npx, nbx - px - 1, px)
            n = 0
            for y in range(py - npy2, py + npy2 + 1):
                for x in range(px - npx2, px + npx2 + 1):
                    bbuf[n] = bflat[y * nbx + x]
                    sbuf[n] = sflat[y * nbx + x]
                    n += 1
            i = py * nbx + px
            med = _median_small(bbuf, n)
            if np.float64(abs(med - bflat[i])) >= fthresh:
                back2[i] = med
                sigma2[i] = _median_small(sbuf, n)
            else:
                back2[i] = bflat[i]
                sigma2[i] = sflat[i]
    bflat[:] = back2
    sflat[:] = sigma2
    back2.sort()
    glob = _median_sorted(back2, npts)
    sigma2.sort()
    globrms = _median_sorted(sigma2, npts)
    if globrms <= 0.0:
        i = npts - 1
        while i >= 0 and sigma2[i] > 0.0:
            i -= 1
        some = 0 <= i < npts - 1
        globrms = _median_sorted(sigma2[i + 1 :], npts - 1 - i) if some else _F1
    return glob, globrms


@njit(cache=True, nogil=True, error_model="numpy")
def spline_y(values, dvalues):
    """sep's ``makebackspline``: the natural cubic spline's second derivatives along y of
    each column of meshes, into ``dvalues`` (``(nby, nbx)`` float32)."""
    nby, nbx = values.shape
    u = np.empty(max(nby - 1, 1), dtype=np.float32)
    for x in range(nbx):
        if nby > 1:
            dvalues[0, x] = _F0
            u[0] = _F0
            for y in range(1, nby - 1):
                temp = -_F1 / (dvalues[y - 1, x] + _F4)
                dvalues[y, x] = temp
                temp *= u[y - 1] - _F6 * (values[y + 1, x] + values[y - 1, x] - _F2 * values[y, x])
                u[y] = temp
            dvalues[nby - 1, x] = _F0
            for y in range(nby - 2, 0, -1):
                dvalues[y, x] = np.float32(np.float64(dvalues[y, x] * dvalues[y + 1, x] + u[y]) / 6.0)
        else:
            dvalues[0, x] = _F0


@njit(cache=True, nogil=True, error_model="numpy")
def _row_nodes(values, dvalues, nby, yl, cdy, dy, cdy3, dy3, node, dnode, u):
    """One row's nodes (the y spline at the row, per mesh column) and their second
    derivatives along x (sep's ``bkg_line_flt_internal``, first half)."""
    nbx = node.shape[0]
    if nby > 1:
        for x in range(nbx):
            node[x] = (
                cdy * values[yl, x]
                + dy * values[yl + 1, x]
                + cdy3 * dvalues[yl, x]
                + dy3 * dvalues[yl + 1, x]
            )
        if nbx > 1:
            dnode[0] = _F0
            u[0] = _F0
            for x in range(1, nbx - 1):
                temp = -_F1 / (dnode[x - 1] + _F4)
                dnode[x] = temp
                temp *= u[x - 1] - _F6 * (node[x + 1] + node[x - 1] - _F2 * node[x])
                u[x] = temp
            dnode[nbx - 1] = _F0
            for x in range(nbx - 2, 0, -1):
                dnode[x] = np.float32(np.float64(dnode[x] * dnode[x + 1] + u[x]) / 6.0)
        else:
            dnode[0] = _F0  # unused: no interpolation along x
    else:  # one row of meshes: the meshes and their (zero) y derivatives, as they are
        for x in range(nbx):
            node[x] = values[0, x]
            dnode[x] = dvalues[0, x]


@njit(cache=True, nogil=True, error_model="numpy")
def _columns(nx, bw, nbx):
    """Per image column the four float32 factors of the x interpolation (``1 - dx``,
    ``(1 - dx)^2 - 1``, ``dx``, ``dx^2 - 1``), ``dx`` advanced as sep advances it along a row
    (float32 steps of ``1 / bw``, reset at each change of node), and ``starts``: the first
    column of each run of columns between the same two nodes (``starts[k]`` for nodes ``k``,
    ``k + 1``; the last entry is ``nx``)."""
    fac = np.empty((4, nx), dtype=np.float32)
    starts = np.zeros(max(nbx, 2) + 1, dtype=np.int64)
    xstep = np.float32(1.0 / bw)
    changepoint = bw // 2
    dx = (xstep - _F1) / _F2
    dx0 = np.float32((bw + 1) % 2) * xstep / _F2
    x = 0
    i = 0
    cur = 0
    for col in range(nx):
        if i == changepoint and x > 0 and x < nbx - 1:
            cur += 1
            starts[cur] = col
            dx = dx0
        cdx = _F1 - dx
        fac[0, col] = cdx
        fac[1, col] = cdx * cdx - _F1
        fac[2, col] = dx
        fac[3, col] = dx * dx - _F1
        if i == bw:
            x += 1
            i = 0
        i += 1
        dx += xstep
    starts[cur + 1] = nx
    return fac, starts[: cur + 2]


@njit(cache=True, nogil=True, error_model="numpy")
def _row_dy(y, bh, nby):
    """sep's y position of image row ``y`` between mesh rows: (yl, dy) with float32 dy."""
    dy = np.float32(np.float64(np.float32(y) / np.float32(bh)) - 0.5)
    yl = np.int64(dy)
    dy -= np.float32(yl)
    if yl < 0:
        yl = 0
        dy = np.float32(np.float64(dy) - 1.0)
    elif yl >= nby - 1:
        yl = nby - 2 if nby >= 2 else 0
        dy = np.float32(np.float64(dy) + 1.0)
    return yl, dy


@njit(cache=True, nogil=True, error_model="numpy")
def _fill_row(out_row, node, dnode, f0, f1, f2, f3, starts, nbx):
    """One row of a map from its nodes (sep's ``bkg_line_flt_internal``, second half); per run
    of columns between two nodes, on 1-D slices (a loop numba vectorizes: each pixel's
    float32 operations are independent of the others')."""
    if nbx > 1:
        for k in range(starts.shape[0] - 1):
            a = starts[k]
            b = starts[k + 1]
            blo = node[k]
            bhi = node[k + 1]
            dblo = dnode[k]
            dbhi = dnode[k + 1]
            r = out_row[a:b]
            g0 = f0[a:b]
            g1 = f1[a:b]
            g2 = f2[a:b]
            g3 = f3[a:b]
            for c in range(b - a):
                r[c] = g0[c] * (blo + g1[c] * dblo) + g2[c] * (bhi + g3[c] * dbhi)
    else:
        v = node[0]
        for c in range(out_row.shape[0]):
            out_row[c] = v


@njit(cache=True, nogil=True, error_model="numpy")
def spline_maps(back, dback, sigma, dsigma, bw, bh, out_back, out_rms, want_back, want_rms):
    """sep's ``sep_bkg_array`` / ``sep_bkg_rmsarray``: the bicubic spline maps of the meshes
    (``back``, ``sigma`` with their y derivatives) into ``out_back`` / ``out_rms``
    (``(ny, nx)`` float32, each written when ``want_*``)."""
    nby, nbx = back.shape
    ny, nx = out_back.shape if want_back else out_rms.shape
    fac, starts = _columns(nx, bw, nbx)
    f0 = fac[0]
    f1 = fac[1]
    f2 = fac[2]
    f3 = fac[3]
    node = np.empty(nbx, dtype=np.float32)
    dnode = np.empty(nbx, dtype=np.float32)
    u = np.empty(max(nbx - 1, 1), dtype=np.float32)
    for y in range(ny):
        yl = 0
        dy = _F0
        if nby > 1:
            yl, dy = _row_dy(y, bh, nby)
        cdy = _F1 - dy
        dy3 = dy * dy * dy - dy
        cdy3 = cdy * cdy * cdy - cdy
        if want_back:
            _row_nodes(back, dback, nby, yl, cdy, dy, cdy3, dy3, node, dnode, u)
            _fill_row(out_back[y], node, dnode, f0, f1, f2, f3, starts, nbx)
        if want_rms:
            _row_nodes(sigma, dsigma, nby, yl, cdy, dy, cdy3, dy3, node, dnode, u)
            _fill_row(out_rms[y], node, dnode, f0, f1, f2, f3, starts, nbx)
