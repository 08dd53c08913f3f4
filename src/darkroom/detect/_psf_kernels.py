"""Compiled kernels of :mod:`darkroom.detect.psf`: the Moffat PSF fit (numba).

Imported by :func:`darkroom.detect.psf.fit_moffat_stamps` when it first runs (numba is
not imported with :mod:`darkroom.detect.psf`, nor at the CLI's start-up). The kernels are
compiled on first use and cached on disk (``cache=True``: a fresh process loads them);
they release the GIL. ``error_model="numpy"``: a division by zero gives inf or NaN as in
numpy (and lets the compiler vectorise the divisions) instead of raising.

Conventions: images and stamps are ``(y, x)`` and flattened in C order (the stamp pixel
``(j, i)`` is entry ``j * size + i``); pixel coordinates are 0-based with integer values
at pixel centres (sep, ``docs/pixel_conventions.md``), so pixel ``i`` spans ``[i - 0.5,
i + 0.5]``. Data and model values are in adu (background-subtracted), widths in pixels.

Parameters of a star (``p``, 8 values): flux [adu], x0, y0 [pixel], qxx, qxy, qyy
[pixel^-2] (the matrix ``Q = beta P``), gamma = 1 / beta, constant [adu]. The profile is
``flux (beta - 1) sqrt(det P) / pi (1 + gamma d^T Q d) ** (-1 / gamma)``, averaged over
the ``os x os`` sub-pixel samples of each pixel. The arithmetic follows the batched numpy
implementation this replaced (kept as the reference in ``tests/test_psf_compiled.py``):
same model, Jacobian, damping, bounds and stopping rule, the same results to rounding
and the same steps per star. Only ``log`` and ``exp`` of the sub-samples stay numpy calls
(on all the stars' samples at once, between two kernels): numpy's SIMD versions cost a
third of the C library's, which compiled code calls one value at a time.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["fit_moffat"]

_MIN_GAMMA, _MAX_GAMMA = 1e-3, 1.0 / 1.3  # 1 / beta: from nearly Gaussian to beta = 1.3


@njit(cache=True, nogil=True, error_model="numpy")
def _offsets(
    p: np.ndarray, gx: np.ndarray, gy: np.ndarray, sub: np.ndarray, dx: np.ndarray, dy: np.ndarray
) -> None:
    """Offsets [pixel] of the sub-samples from the centre ``(p[1], p[2])``: x samples of the
    stamp's columns ``gx`` and y samples of its rows ``gy`` (``size * os`` each, pixel-major)."""
    os_ = sub.shape[0]
    for i in range(gx.shape[0]):
        for s in range(os_):
            dx[i * os_ + s] = (gx[i] + sub[s]) - p[1]
    for j in range(gy.shape[0]):
        for t in range(os_):
            dy[j * os_ + t] = (gy[j] + sub[t]) - p[2]


@njit(cache=True, nogil=True, error_model="numpy")
def _samples(
    trial: np.ndarray,
    rows: np.ndarray,
    n_rows: int,
    gx: np.ndarray,
    gy: np.ndarray,
    sub: np.ndarray,
    u: np.ndarray,
    power: np.ndarray,
) -> None:
    """``u = 1 + gamma d^T Q d`` at every sub-sample of the stamps ``rows[:n_rows]`` for their
    parameters ``trial``, into ``u[e]`` (x sample major: ``xs * ns + ys``, ``ns = size * os``),
    and ``power[e] = -1 / gamma``."""
    ns = gx.shape[1] * sub.shape[0]
    dx, dy, cy = np.empty(ns), np.empty(ns), np.empty(ns)
    for e in range(n_rows):
        r = rows[e]
        p = trial[r]
        _offsets(p, gx[r], gy[r], sub, dx, dy)
        gamma = p[6]
        ax, bx, cyy = gamma * p[3], 2.0 * gamma * p[4], gamma * p[5]
        for ys in range(ns):
            cy[ys] = cyy * (dy[ys] * dy[ys])  # gamma qyy dy^2
        ue = u[e]
        for xs in range(ns):
            a = ax * (dx[xs] * dx[xs]) + 1.0  # 1 + gamma qxx dx^2
            b = bx * dx[xs]  # 2 gamma qxy dx
            base = xs * ns
            for ys in range(ns):
                ue[base + ys] = (a + b * dy[ys]) + cy[ys]
        power[e] = -1.0 / gamma


@njit(cache=True, nogil=True, error_model="numpy")
def _model(
    p: np.ndarray,
    gx: np.ndarray,
    gy: np.ndarray,
    sub: np.ndarray,
    u: np.ndarray,
    log_u: np.ndarray,
    m: np.ndarray,
    model: np.ndarray,
    jac: np.ndarray,
    work: np.ndarray,
) -> None:
    """Model ``(size * size)`` [adu] and Jacobian ``(size * size, 8)`` of one star, in place.

    ``gx``, ``gy`` (``size``): 0-based pixel-centre coordinates of the stamp's columns and
    rows; ``sub`` (``os``): sub-sample offsets from a pixel centre [pixel]; ``u``, ``log_u``
    and ``m = u ** (-1 / gamma)`` at the sub-samples (``ns * ns``, as :func:`_samples`);
    ``work`` ``(6, ns)``. With ``mu = m / u``, the pixel means ``M_ab`` of ``mu dx^a dy^b``
    (summed over the x sub-samples, then the y sub-samples) and of ``m ln u`` give the
    model and every column of the Jacobian.
    """
    size = gx.shape[0]
    os_ = sub.shape[0]
    ns = size * os_
    flux, qxx, qxy, qyy, gamma, const = p[0], p[3], p[4], p[5], p[6], p[7]
    dx, dy = work[0], work[1]
    t0, t1, t2, tl = work[2], work[3], work[4], work[5]
    _offsets(p, gx, gy, sub, dx, dy)
    inv = 1.0 / (os_ * os_)
    # the model's pixel means are c flux (M00 + gamma (qyy M02 + 2 qxy M11 + qxx M20)); the
    # coefficients of M00, M02, M11, M20 per column (flux, qxx, qxy, qyy, gamma, model): d ln c
    # / d (flux, qxx, qxy, qyy, gamma) = (1 / flux, qyy / 2 det, -qxy / det, qxx / 2 det,
    # -1 / (1 - gamma)) times the model, plus the derivatives of the pixel means
    e1, e2, e3 = gamma * qyy, gamma * (2.0 * qxy), gamma * qxx
    det = qxx * qyy - qxy * qxy
    c = (1.0 - gamma) * math.sqrt(max(det, 1e-30)) / math.pi
    cf = c * flux
    h = cf / (2.0 * det)
    sc = (c, h * qyy, h * (-2.0 * qxy), h * qxx, -cf / (1.0 - gamma), cf)
    k02 = (e1 * sc[0], e1 * sc[1], e1 * sc[2], e1 * sc[3] - cf, e1 * sc[4] + cf * (-qyy / gamma), e1 * sc[5])
    k11 = (
        e2 * sc[0],
        e2 * sc[1],
        e2 * sc[2] - 2.0 * cf,
        e2 * sc[3],
        e2 * sc[4] + cf * (-2.0 * qxy / gamma),
        e2 * sc[5],
    )
    k20 = (e3 * sc[0], e3 * sc[1] - cf, e3 * sc[2], e3 * sc[3], e3 * sc[4] + cf * (-qxx / gamma), e3 * sc[5])
    # d/dx0, d/dy0 = 2 cf mean(mu Q d); d/d gamma also has cf mean(m ln u) / gamma^2
    two_cf = 2.0 * cf
    kx10, kx01, ky10, ky01 = two_cf * qxx, two_cf * qxy, two_cf * qxy, two_cf * qyy
    k_log = cf / (gamma * gamma)
    for i in range(size):
        t0[:] = 0.0
        t1[:] = 0.0
        t2[:] = 0.0
        tl[:] = 0.0
        for s in range(os_):  # sums over the x sub-samples of pixel column i, per y sample
            xs = i * os_ + s
            ddx = dx[xs]
            base = xs * ns
            for ys in range(ns):
                mm = m[base + ys]
                mu = mm / u[base + ys]
                mx = mu * ddx
                t0[ys] += mu
                t1[ys] += mx
                t2[ys] += mx * ddx
                tl[ys] += mm * log_u[base + ys]
        for j in range(size):  # then over the y sub-samples of pixel row j
            m00 = m01 = m02 = m10 = m11 = m20 = s_log = 0.0
            for t in range(os_):
                ys = j * os_ + t
                ddy = dy[ys]
                v = t0[ys]
                m00 += v
                m01 += v * ddy
                m02 += v * (ddy * ddy)
                m10 += t1[ys]
                m11 += t1[ys] * ddy
                m20 += t2[ys]
                s_log += tl[ys]
            m00 *= inv
            m01 *= inv
            m02 *= inv
            m10 *= inv
            m11 *= inv
            m20 *= inv
            s_log *= inv
            r = j * size + i
            jac[r, 0] = ((sc[0] * m00 + k02[0] * m02) + k11[0] * m11) + k20[0] * m20
            jac[r, 1] = kx01 * m01 + kx10 * m10
            jac[r, 2] = ky01 * m01 + ky10 * m10
            jac[r, 3] = ((sc[1] * m00 + k02[1] * m02) + k11[1] * m11) + k20[1] * m20
            jac[r, 4] = ((sc[2] * m00 + k02[2] * m02) + k11[2] * m11) + k20[2] * m20
            jac[r, 5] = ((sc[3] * m00 + k02[3] * m02) + k11[3] * m11) + k20[3] * m20
            jac[r, 6] = (((sc[4] * m00 + k02[4] * m02) + k11[4] * m11) + k20[4] * m20) + k_log * s_log
            jac[r, 7] = 1.0
            model[r] = (((sc[5] * m00 + k02[5] * m02) + k11[5] * m11) + k20[5] * m20) + const


@njit(cache=True, nogil=True, error_model="numpy")
def _chi2(data: np.ndarray, weight: np.ndarray, model: np.ndarray) -> float:
    total = 0.0
    for r in range(data.shape[0]):
        d = data[r] - model[r]
        total += weight[r] * (d * d)
    return total


@njit(cache=True, nogil=True, error_model="numpy")
def _normal_equations(
    jac: np.ndarray,
    weight: np.ndarray,
    data: np.ndarray,
    model: np.ndarray,
    normal: np.ndarray,
    grad: np.ndarray,
) -> None:
    """``J^T W J`` (8, 8) and ``J^T W r`` (8) in place (``r = data - model``; BLAS products)."""
    n_pix, k = jac.shape
    jw = np.empty((n_pix, k))
    res = np.empty(n_pix)
    for r in range(n_pix):
        w = weight[r]
        res[r] = data[r] - model[r]
        for a in range(k):
            jw[r, a] = jac[r, a] * w
    normal[:, :] = np.dot(jw.T, jac)
    grad[:] = np.dot(jw.T, res)


@njit(cache=True, nogil=True, error_model="numpy")
def _solve(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> bool:
    """``a x = b`` by LU with partial pivoting (as LAPACK's gesv); ``a`` is overwritten.
    Returns False when a pivot is exactly zero (singular)."""
    n = a.shape[0]
    out[:] = b
    for col in range(n):
        piv = col
        best = abs(a[col, col])
        for r in range(col + 1, n):
            v = abs(a[r, col])
            if v > best:
                best, piv = v, r
        if best == 0.0:
            return False
        if piv != col:
            for c in range(n):
                a[col, c], a[piv, c] = a[piv, c], a[col, c]
            out[col], out[piv] = out[piv], out[col]
        inv = 1.0 / a[col, col]
        for r in range(col + 1, n):
            f = a[r, col] * inv
            if f != 0.0:
                for c in range(col + 1, n):
                    a[r, c] -= f * a[col, c]
                out[r] -= f * out[col]
    for r in range(n - 1, -1, -1):
        acc = out[r]
        for c in range(r + 1, n):
            acc -= a[r, c] * out[c]
        out[r] = acc / a[r, r]
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _valid(p: np.ndarray) -> bool:
    """Finite, flux, qxx, qyy and det Q > 0, gamma within its bounds."""
    for v in p:
        if not math.isfinite(v):
            return False
    return (
        p[0] > 0.0
        and p[3] > 0.0
        and p[5] > 0.0
        and p[3] * p[5] - p[4] ** 2 > 0.0
        and p[6] >= _MIN_GAMMA
        and p[6] <= _MAX_GAMMA
    )


@njit(cache=True, nogil=True, error_model="numpy")
def _step(
    first: bool,
    last: bool,
    rows: np.ndarray,
    n_rows: int,
    params: np.ndarray,
    trial: np.ndarray,
    chi2: np.ndarray,
    lam: np.ndarray,
    normal: np.ndarray,
    grad: np.ndarray,
    active: np.ndarray,
    converged: np.ndarray,
    n_iter: np.ndarray,
    data: np.ndarray,
    weight: np.ndarray,
    gx: np.ndarray,
    gy: np.ndarray,
    sub: np.ndarray,
    u: np.ndarray,
    log_u: np.ndarray,
    m: np.ndarray,
    power: np.ndarray,
) -> tuple[int, int]:
    """One Levenberg-Marquardt step of every star still being fitted (the first call: the start).

    The stars ``rows[:n_rows]`` had their trial parameters evaluated (``u``, ``log_u``,
    ``m`` at their sub-samples, row ``e`` for ``rows[e]``); the other active stars' trials
    were outside the bounds. Accepts or rejects each trial, updates the damping, retires the
    stars that converged (all remaining ones when ``last``), then writes the next trial of
    each active star and the samples of those within bounds (``rows``, ``u``, ``power``).
    Returns the number of trials to evaluate and of stars still active.
    """
    n, k = params.shape
    n_pix = data.shape[1]
    ns = gx.shape[1] * sub.shape[0]
    t_model = np.empty(n_pix)
    t_jac = np.empty((n_pix, k))
    work = np.empty((6, ns))
    slot = np.full(n, -1)
    for e in range(n_rows):
        slot[rows[e]] = e
    for r in range(n):
        if not (active[r] or first):
            continue
        e = slot[r]
        t_chi2 = np.inf
        if e >= 0:
            _model(trial[r], gx[r], gy[r], sub, u[e], log_u[e], m[e], t_model, t_jac, work)
            t_chi2 = _chi2(data[r], weight[r], t_model)
        if first:  # the starting parameters: stars whose chi^2 is not finite are not fitted
            chi2[r] = t_chi2
            if math.isfinite(t_chi2):
                active[r] = True
                lam[r] = 1e-3
                _normal_equations(t_jac, weight[r], data[r], t_model, normal[r], grad[r])
            continue
        n_iter[r] += 1
        better = t_chi2 < chi2[r]
        small = better and chi2[r] - t_chi2 <= 1e-6 * max(chi2[r], 1e-30)
        if better:
            params[r] = trial[r]
            _normal_equations(t_jac, weight[r], data[r], t_model, normal[r], grad[r])
            chi2[r] = t_chi2
            lam[r] = max(lam[r] / 3.0, 1e-9)
        else:
            lam[r] = lam[r] * 6.0
        if small or lam[r] > 1e8 or last:
            active[r] = False
            converged[r] = True
    # the next trials: J^T W J + lam diag(J^T W J) (the diagonal at least 1e-30)
    damped = np.empty((k, k))
    step = np.empty(k)
    n_next = 0
    n_active = 0
    for r in range(n):
        if not active[r]:
            continue
        n_active += 1
        damped[:, :] = normal[r]
        for a in range(k):
            damped[a, a] += lam[r] * max(normal[r, a, a], 1e-30)
        if not _solve(damped, grad[r], step):
            damped[:, :] = normal[r]
            for a in range(k):
                damped[a, a] += lam[r] * max(normal[r, a, a], 1e-30)
            step[:] = np.linalg.lstsq(damped, grad[r], rcond=k * np.finfo(np.float64).eps)[0]
        for a in range(k):
            trial[r, a] = params[r, a] + step[a]
        if _valid(trial[r]):  # trials outside the bounds are not evaluated
            rows[n_next] = r
            n_next += 1
    _samples(trial, rows, n_next, gx, gy, sub, u, power)
    return n_next, n_active


def fit_moffat(
    params: np.ndarray,
    data: np.ndarray,
    weight: np.ndarray,
    gx: np.ndarray,
    gy: np.ndarray,
    sub: np.ndarray,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg-Marquardt fits of the pixel-integrated Moffat model to every stamp.

    ``params (n, 8)``: starting parameters (see the module); ``data``, ``weight`` ``(n, size
    * size)``: background-subtracted stamps [adu] and their weights (0 for pixels to
    ignore); ``gx``, ``gy`` ``(n, size)``: 0-based pixel-centre coordinates of each stamp's
    columns and rows; ``sub (os)``: sub-sample offsets from a pixel centre [pixel]. All
    arrays float64 and C-contiguous.

    Each star: damping ``lam`` from 1e-3 (``J^T W J + lam diag(J^T W J)``, the diagonal at
    least 1e-30), divided by 3 (down to 1e-9) after a step that lowers chi^2, multiplied by
    6 otherwise; steps outside the bounds are not evaluated; the fit stops when a step
    lowers chi^2 by at most 1e-6 of it, when ``lam`` exceeds 1e8, or after ``max_iter``
    steps (the last parameters kept). A star whose starting chi^2 is not finite is not
    fitted. Returns the parameters ``(n, 8)``, chi^2 ``(n)`` [adu^2], a convergence flag and
    the number of steps taken per star.

    The compiled kernels do all the arithmetic but the logarithm and the exponential of the
    samples, which numpy computes over all the stars' samples at once between them (its SIMD
    ``log`` and ``exp`` cost a third of the C library's, which numba calls one by one).
    """
    n, k = params.shape
    ns = gx.shape[1] * sub.shape[0]
    params = params.copy()
    trial = params.copy()
    chi2 = np.full(n, np.inf)
    lam = np.zeros(n)
    normal = np.zeros((n, k, k))
    grad = np.zeros((n, k))
    active = np.zeros(n, dtype=np.bool_)
    converged = np.zeros(n, dtype=np.bool_)
    n_iter = np.zeros(n, dtype=np.int64)
    u = np.empty((n, ns * ns))
    log_u = np.empty((n, ns * ns))
    m = np.empty((n, ns * ns))
    power = np.empty(n)
    rows = np.arange(n)
    _samples(trial, rows, n, gx, gy, sub, u, power)
    n_rows = n
    for i in range(max_iter + 1):
        np.log(u[:n_rows], out=log_u[:n_rows])
        np.multiply(log_u[:n_rows], power[:n_rows, None], out=m[:n_rows])
        np.exp(m[:n_rows], out=m[:n_rows])  # m = u ** (-1 / gamma)
        n_rows, n_active = _step(
            i == 0, i == max_iter, rows, n_rows, params, trial, chi2, lam, normal, grad, active,
            converged, n_iter, data, weight, gx, gy, sub, u, log_u, m, power,
        )  # fmt: skip
        if not n_active:
            break
    return params, chi2, converged, n_iter
