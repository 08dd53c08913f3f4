"""Star profiles fitted in postage stamps: Gaussian centroids and Moffat PSF fits.

Both models are integrated over each pixel (a pixel holds the mean of the profile
over its area), so the fitted widths are those of the point-spread function *before*
pixel sampling and the fitted positions carry no pixel-phase bias, even for stars one
pixel wide (where Gaussian-windowed centroids lock onto pixel centres).

- :func:`fit_gaussian_stamps`: circular Gaussian plus a constant, fitted to every
  given source at once (the Gaussian integrates over a pixel in closed form, with
  ``erf``): centroids of undersampled stars.
- :func:`fit_moffat_stamps`: elliptical Moffat profile with free beta plus a constant
  (integrated on a sub-pixel grid): the FWHM of stars without the bias of a
  half-light radius or of a Gaussian fit, which are 1.26 and 1.14 times the FWHM of
  a Moffat beta = 3 star.
- :func:`measure_psf`: the frame's FWHM, beta and ellipticity from Moffat fits to its
  brightest isolated unsaturated stars.

Fits are Levenberg-Marquardt least squares run on all stamps together (numpy arrays
of shape ``(n_stars, ...)``), with equal weights for the unmasked pixels; the Moffat
fit's model and steps run in numba-compiled kernels (:mod:`darkroom.detect._psf_kernels`,
loaded on its first call). Images are
``(ny, nx)`` and background-subtracted; positions are 0-based pixel centres (sep);
see ``docs/pixel_conventions.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import erf

from darkroom.robust import robust_std

__all__ = [
    "GaussianFits",
    "MoffatFits",
    "PsfFit",
    "fit_gaussian_stamps",
    "fit_moffat_stamps",
    "measure_psf",
]

log = logging.getLogger(__name__)

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_SQRT2 = math.sqrt(2.0)

#: ``func(params, rows) -> (model, jacobian)``: the model ``(len(rows), m)`` of stamps ``rows`` and its
#: Jacobian ``(len(rows), m, n_params)``
ModelFunction = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class GaussianFits:
    """Results of :func:`fit_gaussian_stamps`, one entry per source (NaN where ``ok`` is False)."""

    x: np.ndarray  #: centroid x, 0-based pixel centre
    y: np.ndarray  #: centroid y, 0-based pixel centre
    fwhm_pix: np.ndarray  #: FWHM of the Gaussian before pixel sampling [pixels]
    flux_adu: np.ndarray  #: total flux of the Gaussian [adu]
    ok: np.ndarray  #: the fit converged inside its bounds


@dataclass(frozen=True)
class MoffatFits:
    """Results of :func:`fit_moffat_stamps`, one entry per star (NaN where ``ok`` is False).

    The profile is ``I = flux (beta - 1) sqrt(det P) / pi (1 + d^T P d) ** -beta`` with
    ``d`` the offset from the centre and ``P`` a 2 x 2 positive-definite matrix [pixel^-2].
    It is fitted as ``P = Q / beta`` with ``1 / beta`` from 0.001 to 1 / 1.3, so that a
    Gaussian star (the limit of infinite beta) is within reach.
    """

    x: np.ndarray  #: centre x, 0-based pixel centre
    y: np.ndarray  #: centre y, 0-based pixel centre
    fwhm_pix: np.ndarray  #: geometric mean of the major- and minor-axis FWHM [pixels]
    fwhm_major_pix: np.ndarray  #: FWHM along the major axis [pixels]
    fwhm_minor_pix: np.ndarray  #: FWHM along the minor axis [pixels]
    theta_rad: np.ndarray  #: position angle of the major axis, from +x towards +y [rad]
    beta: np.ndarray  #: Moffat beta
    flux_adu: np.ndarray  #: total flux [adu]
    rms_adu: np.ndarray  #: rms residual in the stamp [adu]
    ok: np.ndarray  #: the fit converged inside its bounds

    @property
    def ellipticity(self) -> np.ndarray:
        """1 - minor / major axis FWHM."""
        return 1.0 - self.fwhm_minor_pix / self.fwhm_major_pix


@dataclass(frozen=True)
class PsfFit:
    """The point-spread function of a frame from Moffat fits to its stars (:func:`measure_psf`)."""

    fwhm_pix: float  #: median FWHM of the fitted stars (geometric mean of the axes) [pixels]
    beta: float  #: median Moffat beta
    ellipticity: float  #: median 1 - minor / major axis FWHM
    n_stars: int  #: stars whose fit was used
    index: np.ndarray  #: rows of the input positions that were fitted and used
    fits: MoffatFits  #: the individual fits of those rows


def _levenberg_marquardt(
    func: ModelFunction,
    params: np.ndarray,
    data: np.ndarray,
    weight: np.ndarray,
    valid: Callable[[np.ndarray], np.ndarray],
    *,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Batched Levenberg-Marquardt: ``params (n, k)`` fitted to ``data (n, m)`` with ``weight (n, m)``.

    ``func(params, rows)`` returns the model ``(len(rows), m)`` of the stamps ``rows`` for
    their parameters ``params`` and its Jacobian ``(len(rows), m, k)``. The normal equations
    ``J^T W J`` and ``J^T W r`` of a stamp are formed when its parameters change and kept
    while only its damping changes; the rows still being fitted are kept together (the
    arrays shrink when rows finish). Trial steps outside the bounds (``valid(params)``
    False) are not evaluated. Returns the parameters, the weighted sum of squared residuals,
    a convergence flag and the number of steps taken per row.
    """
    n, k = params.shape
    out_params = params.copy()
    model, jac = func(params, np.arange(n))
    out_chi2 = np.sum(weight * (data - model) ** 2, axis=1)
    converged = np.zeros(n, dtype=bool)
    n_iter = np.zeros(n, dtype=np.int64)
    rows = np.flatnonzero(np.isfinite(out_chi2))  # the rows being fitted, and their arrays:
    p, d, w, chi2 = params[rows], data[rows], weight[rows], out_chi2[rows]
    model, jac = model[rows], jac[rows]

    def normal_equations(jac: np.ndarray, w: np.ndarray, resid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """J^T W J (len, k, k) and J^T W r (len, k)."""
        jw = np.swapaxes(jac * w[:, :, None], 1, 2)
        return jw @ jac, (jw @ resid[:, :, None])[:, :, 0]

    normal, grad = normal_equations(jac, w, d - model)
    lam = np.full(len(rows), 1e-3)
    diagonal = np.arange(0, k * k, k + 1)  # the diagonal of a flattened (k, k)
    for i in range(max_iter):
        if not len(rows):
            break
        n_iter[rows] = i + 1
        # J^T W J + lam diag(J^T W J) (the diagonal at least 1e-30)
        damped = normal.reshape(-1, k * k).copy()
        damped[:, diagonal] += lam[:, None] * np.maximum(damped[:, diagonal], 1e-30)
        damped = damped.reshape(-1, k, k)
        try:
            step = np.linalg.solve(damped, grad[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            step = np.stack([np.linalg.lstsq(a, v, rcond=None)[0] for a, v in zip(damped, grad, strict=True)])
        trial = p + step
        ok = np.isfinite(trial).all(axis=1) & valid(trial)
        if ok.all():
            t_model, t_jac = func(trial, rows)
            t_chi2 = np.sum(w * (d - t_model) ** 2, axis=1)
        else:
            tried = np.flatnonzero(ok)
            t_chi2 = np.full(len(rows), np.inf)
            if len(tried):
                t_model, t_jac = func(trial[tried], rows[tried])
                t_chi2[tried] = np.sum(w[tried] * (d[tried] - t_model) ** 2, axis=1)
        better = t_chi2 < chi2  # False where not tried (inf)
        if better.all():
            p, model, chi2_new = trial, t_model, t_chi2
            normal, grad = normal_equations(t_jac, w, d - model)
        else:
            chi2_new = np.where(better, t_chi2, chi2)
            if better.any():
                accepted = better[ok]
                p[better] = trial[better]
                model[better] = t_model[accepted]
                normal[better], grad[better] = normal_equations(
                    t_jac[accepted], w[better], d[better] - model[better]
                )
        small = better & (chi2 - t_chi2 <= 1e-6 * np.maximum(chi2, 1e-30))
        chi2 = chi2_new
        lam = np.where(better, np.maximum(lam / 3.0, 1e-9), lam * 6.0)
        done = small | (lam > 1e8)
        if done.any():
            out_params[rows[done]] = p[done]
            out_chi2[rows[done]] = chi2[done]
            converged[rows[done]] = True
            keep = ~done
            rows, p, d, w, chi2, lam = rows[keep], p[keep], d[keep], w[keep], chi2[keep], lam[keep]
            model, normal, grad = model[keep], normal[keep], grad[keep]
    # out of iterations but improving: accept the last parameters
    out_params[rows] = p
    out_chi2[rows] = chi2
    converged[rows] = True
    return out_params, out_chi2, converged, n_iter


def _stamps(
    image: np.ndarray, bad: np.ndarray | None, x: np.ndarray, y: np.ndarray, half: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stamps ``(n, 2h+1, 2h+1)`` around the nearest pixels, their weights (0 off the image or
    bad) and the pixel-centre coordinates ``gx (n, 2h+1)``, ``gy (n, 2h+1)``."""
    ny, nx = image.shape
    offs = np.arange(-half, half + 1)
    gx = np.rint(x).astype(int)[:, None] + offs[None, :]
    gy = np.rint(y).astype(int)[:, None] + offs[None, :]
    inside = ((gy >= 0) & (gy < ny))[:, :, None] & ((gx >= 0) & (gx < nx))[:, None, :]
    iy = np.clip(gy, 0, ny - 1)[:, :, None]
    ix = np.clip(gx, 0, nx - 1)[:, None, :]
    data = image[iy, ix].astype(np.float64)
    weight = inside.astype(np.float64)
    if bad is not None:
        weight[bad[iy, ix]] = 0.0
    weight[~np.isfinite(data)] = 0.0
    data = np.where(weight > 0, data, 0.0)
    return data, weight, gx.astype(np.float64), gy.astype(np.float64)


def _pixel_gaussian(edges_lo: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D Gaussian (unit integral) integrated over pixels ``[lo, lo + 1]``, offsets from the centre.

    Returns the integrals and their derivatives with respect to the centre and to sigma.
    ``edges_lo`` is ``(n, m)``, ``sigma`` is ``(n, 1)``.
    """
    lo = edges_lo
    hi = edges_lo + 1.0
    s2 = _SQRT2 * sigma
    value = 0.5 * (erf(hi / s2) - erf(lo / s2))
    norm = 1.0 / (math.sqrt(2.0 * math.pi) * sigma)
    phi_hi = norm * np.exp(-0.5 * (hi / sigma) ** 2)
    phi_lo = norm * np.exp(-0.5 * (lo / sigma) ** 2)
    d_centre = phi_lo - phi_hi
    d_sigma = (lo * phi_lo - hi * phi_hi) / sigma
    return value, d_centre, d_sigma


def fit_gaussian_stamps(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    fwhm_pix: float | np.ndarray,
    half_size_pix: int = 2,
    bad: np.ndarray | None = None,
    max_iter: int = 30,
) -> GaussianFits:
    """Circular pixel-integrated Gaussian plus a constant, fitted around each source.

    Parameters
    ----------
    image
        Background-subtracted image ``(ny, nx)`` [adu].
    x, y
        Starting positions, 0-based pixel centres; each stamp is centred on the nearest pixel.
    fwhm_pix
        Starting FWHM [pixels] (one value, or one per source).
    half_size_pix
        Stamps are ``2 h + 1`` pixels wide.
    bad
        Boolean ``(ny, nx)``, True for pixels to ignore.
    max_iter
        Levenberg-Marquardt iterations at most.

    Returns
    -------
    GaussianFits
        A fit is ``ok`` when it converged with its centre within ``h`` pixels of the
        start, a positive flux and a FWHM between 0.1 and ``2 h + 1`` pixels.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(x)
    nan = np.full(n, np.nan)
    usable = np.isfinite(x) & np.isfinite(y)
    if not usable.any():
        return GaussianFits(nan, nan.copy(), nan.copy(), nan.copy(), np.zeros(n, dtype=bool))
    rows = np.flatnonzero(usable)
    half = int(half_size_pix)
    data, weight, gx, gy = _stamps(image, bad, x[rows], y[rows], half)
    m = len(rows)
    size = 2 * half + 1
    data = data.reshape(m, -1)
    weight = weight.reshape(m, -1)
    sigma0 = np.clip(
        np.broadcast_to(np.asarray(fwhm_pix, dtype=float), (n,))[rows] / _FWHM_PER_SIGMA, 0.3, size
    )
    sigma0 = np.where(np.isfinite(sigma0), sigma0, 1.0)
    params = np.column_stack(
        [np.maximum((data * weight).sum(axis=1), 1.0), x[rows], y[rows], sigma0, np.zeros(m)]
    )
    x_start, y_start = x[rows], y[rows]

    def func(p: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flux, x0, y0, sig, const = (p[:, i] for i in range(5))
        ex, dex, dsx = _pixel_gaussian(gx[idx] - 0.5 - x0[:, None], sig[:, None])
        ey, dey, dsy = _pixel_gaussian(gy[idx] - 0.5 - y0[:, None], sig[:, None])
        outer = ey[:, :, None] * ex[:, None, :]
        model = flux[:, None, None] * outer + const[:, None, None]
        jac = np.empty((len(p), size, size, 5))
        jac[..., 0] = outer
        jac[..., 1] = flux[:, None, None] * ey[:, :, None] * dex[:, None, :]
        jac[..., 2] = flux[:, None, None] * dey[:, :, None] * ex[:, None, :]
        jac[..., 3] = flux[:, None, None] * (
            dsy[:, :, None] * ex[:, None, :] + ey[:, :, None] * dsx[:, None, :]
        )
        jac[..., 4] = 1.0
        jac = jac.reshape(len(p), -1, 5)
        return model.reshape(len(p), -1), jac

    def valid(p: np.ndarray) -> np.ndarray:
        # rows of p are those still being fitted: bounds relative to the start are checked below
        return (p[:, 0] > 0) & (p[:, 3] > 0.04) & (p[:, 3] < size)

    params, _chi2, converged, _n_iter = _levenberg_marquardt(
        func, params, data, weight, valid, max_iter=max_iter
    )
    fwhm = params[:, 3] * _FWHM_PER_SIGMA
    ok = (
        converged
        & (np.abs(params[:, 1] - x_start) <= half)
        & (np.abs(params[:, 2] - y_start) <= half)
        & (params[:, 0] > 0)
        & (fwhm >= 0.1)
        & (fwhm <= size)
        & (weight.sum(axis=1) >= 5)
    )
    out = [nan.copy() for _ in range(4)]
    for arr, values in zip(out, (params[:, 1], params[:, 2], fwhm, params[:, 0]), strict=True):
        arr[rows] = np.where(ok, values, np.nan)
    ok_all = np.zeros(n, dtype=bool)
    ok_all[rows] = ok
    return GaussianFits(x=out[0], y=out[1], fwhm_pix=out[2], flux_adu=out[3], ok=ok_all)


def _moffat_fwhm(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Major- and minor-axis FWHM [pixels] and the major axis angle from the fitted parameters."""
    qxx, qxy, qyy, gamma = p[:, 3], p[:, 4], p[:, 5], p[:, 6]
    tr = 0.5 * (qxx + qyy)
    disc = np.sqrt(np.maximum((0.5 * (qxx - qyy)) ** 2 + qxy**2, 0.0))
    lam_small = tr - disc  # the smallest curvature is the major axis
    lam_large = tr + disc
    # half maximum where gamma d^T Q d = 2 ** gamma - 1
    k = 2.0 * np.sqrt(np.expm1(gamma * math.log(2.0)) / gamma)
    with np.errstate(divide="ignore", invalid="ignore"):
        major = k / np.sqrt(lam_small)
        minor = k / np.sqrt(lam_large)
    theta = 0.5 * np.arctan2(-2.0 * qxy, qyy - qxx)
    return major, minor, theta


def _moffat_half_size(fwhm_pix: float) -> int:
    return int(np.clip(math.ceil(2.0 * fwhm_pix), 3, 20))


def _fit_moffat(
    params: np.ndarray,
    data: np.ndarray,
    weight: np.ndarray,
    gx: np.ndarray,
    gy: np.ndarray,
    sub: np.ndarray,
    *,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg-Marquardt Moffat fits of the stamps: parameters ``(n, 8)``, chi^2 and convergence flags.

    ``params`` are (flux, x0, y0, qxx, qxy, qyy, gamma, constant) per star; ``data`` and
    ``weight`` ``(n, size * size)``; ``gx``, ``gy`` ``(n, size)`` the 0-based pixel-centre
    coordinates of the stamps' columns and rows; ``sub`` the sub-sample offsets. The model
    and the fit run in compiled code (:mod:`darkroom.detect._psf_kernels`, numba, imported
    here on first use so that importing this module does not load numba) with the same
    model, steps, bounds and stopping rule as the batched numpy fit it replaced, kept as the
    reference in ``tests/test_psf_compiled.py`` (the same results to rounding).
    """
    from darkroom.detect._psf_kernels import fit_moffat

    out, chi2, converged, _n_iter = fit_moffat(
        np.ascontiguousarray(params, dtype=np.float64),
        np.ascontiguousarray(data, dtype=np.float64),
        np.ascontiguousarray(weight, dtype=np.float64),
        np.ascontiguousarray(gx, dtype=np.float64),
        np.ascontiguousarray(gy, dtype=np.float64),
        np.ascontiguousarray(sub, dtype=np.float64),
        int(max_iter),
    )
    return out, chi2, converged


def fit_moffat_stamps(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    fwhm_pix: float | np.ndarray,
    half_size_pix: int | None = None,
    bad: np.ndarray | None = None,
    oversample: int | None = None,
    max_iter: int = 40,
) -> MoffatFits:
    """Elliptical pixel-integrated Moffat profile (free beta) plus a constant, fitted around each star.

    Parameters
    ----------
    image
        Background-subtracted image ``(ny, nx)`` [adu].
    x, y
        Starting positions, 0-based pixel centres.
    fwhm_pix
        Starting FWHM [pixels] (one value, or one per star).
    half_size_pix
        Stamps are ``2 h + 1`` pixels wide; default twice the median starting FWHM
        (at least 3, at most 20).
    bad
        Boolean ``(ny, nx)``, True for pixels to ignore (bad pixels, neighbours).
    oversample
        Sub-pixel samples per axis for the integration over each pixel; by default
        about 9 samples per starting FWHM (1 to 7; the FWHM comes out within 0.5 %).
    max_iter
        Levenberg-Marquardt iterations at most.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(x)
    fwhm0 = np.broadcast_to(np.asarray(fwhm_pix, dtype=float), (n,)).copy()
    usable = np.isfinite(fwhm0) & (fwhm0 > 0)
    if not usable.all():
        fwhm0 = np.where(usable, fwhm0, np.nanmedian(fwhm0))
    fwhm0 = np.clip(np.nan_to_num(fwhm0, nan=2.0), 0.5, 50.0)
    typical = float(np.median(fwhm0)) if n else 2.0
    half = _moffat_half_size(typical) if half_size_pix is None else int(half_size_pix)
    os_ = int(np.clip(math.ceil(9.0 / typical), 1, 7)) if oversample is None else int(oversample)
    size = 2 * half + 1
    nan = np.full(n, np.nan)
    if n == 0:
        empty = np.zeros(0)
        return MoffatFits(*(empty.copy() for _ in range(9)), ok=np.zeros(0, dtype=bool))
    data, weight, gx, gy = _stamps(image, bad, x, y, half)
    data = data.reshape(n, -1)
    weight = weight.reshape(n, -1)
    sub = (np.arange(os_) + 0.5) / os_ - 0.5  # sub-sample offsets from a pixel centre
    gamma0 = 0.3
    # Q = beta / alpha^2 for the starting FWHM at beta = 1 / gamma0
    q0 = 4.0 * np.expm1(gamma0 * math.log(2.0)) / gamma0 / fwhm0**2
    params = np.column_stack(
        [
            np.maximum((data * weight).sum(axis=1), 1.0),
            x,
            y,
            q0,
            np.zeros(n),
            q0,
            np.full(n, gamma0),
            np.zeros(n),
        ]
    )
    params, chi2, converged = _fit_moffat(params, data, weight, gx, gy, sub, max_iter=max_iter)
    major, minor, theta = _moffat_fwhm(params)
    fwhm = np.sqrt(major * minor)
    n_pix = weight.sum(axis=1)
    ok = (
        converged
        & (np.abs(params[:, 1] - x) <= 0.5 * half)
        & (np.abs(params[:, 2] - y) <= 0.5 * half)
        & np.isfinite(fwhm)
        & (fwhm > 0.1)
        & (major < size)
        & (n_pix >= 9)
    )

    def masked(values: np.ndarray) -> np.ndarray:
        return np.where(ok, values, nan)

    return MoffatFits(
        x=masked(params[:, 1]),
        y=masked(params[:, 2]),
        fwhm_pix=masked(fwhm),
        fwhm_major_pix=masked(major),
        fwhm_minor_pix=masked(minor),
        theta_rad=masked(theta),
        beta=masked(1.0 / params[:, 6]),
        flux_adu=masked(params[:, 0]),
        rms_adu=masked(np.sqrt(chi2 / np.maximum(n_pix, 1.0))),
        ok=ok,
    )


def _neighbour_mask(
    shape: tuple[int, int],
    bad: np.ndarray | None,
    x: np.ndarray,
    y: np.ndarray,
    others_x: np.ndarray,
    others_y: np.ndarray,
    *,
    radius_pix: float,
    reach_pix: float,
) -> np.ndarray:
    """``bad`` plus discs of ``radius_pix`` around the other sources within ``reach_pix`` of the stars."""
    out = np.zeros(shape, dtype=bool) if bad is None else bad.copy()
    ok = np.isfinite(others_x) & np.isfinite(others_y)
    ox, oy = others_x[ok], others_y[ok]
    if not len(ox):
        return out
    near = cKDTree(np.column_stack([ox, oy])).query_ball_point(np.column_stack([x, y]), reach_pix)
    star = np.repeat(np.arange(len(x)), [len(v) for v in near])
    other = np.fromiter((k for v in near for k in v), dtype=np.intp, count=len(star))
    other = np.unique(other[np.hypot(ox[other] - x[star], oy[other] - y[star]) >= 0.5])  # not the star itself
    if not len(other):
        return out
    ny, nx = shape
    r = math.ceil(radius_pix)
    offs = np.arange(-r, r + 1)
    ox, oy = ox[other, None, None], oy[other, None, None]
    px = np.rint(ox).astype(int) + offs[None, None, :]
    py = np.rint(oy).astype(int) + offs[None, :, None]
    inside = (
        (px >= 0) & (px < nx) & (py >= 0) & (py < ny) & ((px - ox) ** 2 + (py - oy) ** 2 <= radius_pix**2)
    )
    out[np.broadcast_to(py, inside.shape)[inside], np.broadcast_to(px, inside.shape)[inside]] = True
    return out


def measure_psf(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    fwhm_pix: np.ndarray,
    candidates: np.ndarray,
    brightness: np.ndarray,
    n_stars: int = 30,
    bad: np.ndarray | None = None,
    min_stars: int = 3,
) -> PsfFit | None:
    """FWHM, beta and ellipticity of a frame's stars from Moffat fits to the brightest candidates.

    Parameters
    ----------
    image
        Background-subtracted image ``(ny, nx)`` [adu].
    x, y
        Positions of *all* detected sources (0-based); the other sources near a fitted
        star are masked out of its stamp.
    fwhm_pix
        A first FWHM estimate per source [pixels] (e.g. from the half-light radius).
    candidates
        Boolean, the sources that may be fitted (isolated, unsaturated, unflagged, bright).
    brightness
        Ranking of the sources (e.g. aperture flux); the ``n_stars`` brightest candidates
        whose first FWHM is within a factor 2 of the candidates' median are fitted.
    n_stars
        How many stars to fit.
    bad
        Boolean ``(ny, nx)``, True for pixels to ignore.
    min_stars
        Fewer successful fits give None.

    Returns
    -------
    PsfFit or None
        Medians over the fits that converged, after a 3-sigma clip (MAD) of the FWHM.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    fwhm_pix = np.asarray(fwhm_pix, dtype=float)
    cand = np.flatnonzero(np.asarray(candidates, dtype=bool) & np.isfinite(fwhm_pix) & (fwhm_pix > 0))
    if len(cand) < min_stars:
        return None
    typical = float(np.median(fwhm_pix[cand]))
    cand = cand[(fwhm_pix[cand] > 0.5 * typical) & (fwhm_pix[cand] < 2.0 * typical)]
    order = np.argsort(-np.nan_to_num(np.asarray(brightness, dtype=float)[cand], nan=-np.inf), kind="stable")
    chosen = cand[order[:n_stars]]
    if len(chosen) < min_stars:
        return None
    half = _moffat_half_size(typical)
    masked = _neighbour_mask(
        image.shape,
        bad,
        x[chosen],
        y[chosen],
        x,
        y,
        radius_pix=max(1.5 * typical, 1.5),
        reach_pix=half * math.sqrt(2.0) + 1.5 * typical + 1.0,
    )
    fits_ = fit_moffat_stamps(
        image, x[chosen], y[chosen], fwhm_pix=fwhm_pix[chosen], half_size_pix=half, bad=masked
    )
    good = fits_.ok.copy()
    if good.sum() >= min_stars:
        values = fits_.fwhm_pix[good]
        med = float(np.median(values))
        mad = robust_std(values)
        keep = np.abs(fits_.fwhm_pix - med) <= max(3.0 * mad, 0.02 * med)
        good &= keep
    if good.sum() < min_stars:
        log.debug("PSF fit: %d of %d stars converged, too few", int(good.sum()), len(chosen))
        return None
    index = chosen[good]
    kept = MoffatFits(**{name: getattr(fits_, name)[good] for name in MoffatFits.__dataclass_fields__})
    return PsfFit(
        fwhm_pix=float(np.median(kept.fwhm_pix)),
        beta=float(np.median(kept.beta)),
        ellipticity=float(np.median(kept.ellipticity)),
        n_stars=len(index),
        index=index,
        fits=kept,
    )


def load_compiled_kernels() -> None:
    """Compile the Moffat fit's numba kernels, or load them from numba's disk cache, now.

    Fits one synthetic star (a float32 stamp, as the extract stage's images are) so that the
    kernels are ready: the first fit in a process otherwise pays numba's start-up there (~0.3 s;
    ~12 s the first time after installing, when the kernels are compiled and cached). Used after
    installing and by a fork server whose workers then inherit the loaded kernels.
    """
    yy, xx = np.mgrid[0:31, 0:31]
    star = 1000.0 * (1.0 + ((xx - 15.2) ** 2 + (yy - 14.8) ** 2) / 4.0) ** -3.0
    fit_moffat_stamps(star.astype(np.float32), np.array([15.0]), np.array([15.0]), fwhm_pix=3.0)
