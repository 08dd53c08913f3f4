"""Illumination (flat-field) correction of a field's photometry from its own stars.

A night with no flats, or flats that do not match, leaves the detector's illumination
pattern (vignetting, a wrong flat's residue) in every measurement. For a static field it
cancels in differential photometry; for a field that drifts, each star runs through the
pattern along its own track and the pattern becomes a slow trend of the target against
its comparison stars: 4 % of vignetting sampled by a 120 px drift bends a transit's
baseline enough to change its depth by ~2 %.

The stars themselves measure the pattern (the idea of "star flats" and of ubercal): the
log-flux of star ``s`` at epoch ``e`` is modelled as

    ln f[e, s] = a_s + b_e + P(u[e, s], v[e, s])

with a star term ``a_s`` (its brightness), an epoch term ``b_e`` (transparency, exposure),
and ``P`` a polynomial without constant in the detector position normalised to -1..1.
The two sets of fixed effects are swept out by alternating weighted demeaning (Frisch-
Waugh-Lovell), then ``P`` is a weighted least-squares fit of the demeaned log-flux on the
demeaned polynomial terms, with outliers and variable stars clipped. Only what the stars'
motion constrains is determined; the rest is a per-star or per-epoch constant, which
differential photometry cancels. The correction is applied only when it is significant
(the chi-square drop), so a flat-fielded or static field is left as it is.

Positions are 0-based pixels of each frame; fluxes in any one unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from darkroom.timeseries.settings import IlluminationConfig

__all__ = ["IlluminationConfig", "IlluminationFit", "fit_illumination"]


@dataclass(frozen=True)
class IlluminationFit:
    """The fitted pattern and the flux factor that removes it."""

    factor: np.ndarray  #: (n_epoch, n_star) multiply fluxes by this (1 where nothing is known)
    applied: bool  #: whether ``factor`` is more than ones
    reason: str  #: why (not) applied, one line
    chi2_drop: float = 0.0  #: significance of the pattern (chi-square units, reduced chi2 = 1)
    amplitude: float = 0.0  #: peak-to-peak of the pattern over the measured positions [fraction]
    n_stars: int = 0  #: stars used in the fit


def _terms(u: np.ndarray, v: np.ndarray, order: int) -> np.ndarray:
    """Polynomial terms u^i v^j with 1 <= i + j <= order, stacked on a last axis."""
    return np.stack([u**i * v ** (n - i) for n in range(1, order + 1) for i in range(n, -1, -1)], axis=-1)


def _sweep(z: np.ndarray, w: np.ndarray, n_iter: int = 30, tol: float = 1e-10) -> np.ndarray:
    """``z`` (n_epoch, n_star, k) with weighted epoch and star means removed alternately until
    both are zero (weights ``w`` (n_epoch, n_star), 0 where not observed)."""
    z = z.copy()
    wz = w[..., None]
    sw_e = np.maximum(w.sum(axis=1), 1e-300)[:, None]
    sw_s = np.maximum(w.sum(axis=0), 1e-300)[:, None]
    for _ in range(n_iter):
        me = (wz * z).sum(axis=1) / sw_e
        z -= me[:, None, :]
        ms = (wz * z).sum(axis=0) / sw_s
        z -= ms[None, :, :]
        if np.max(np.abs(me)) < tol and np.max(np.abs(ms)) < tol:
            break
    return np.where(wz > 0, z, 0.0)


def fit_illumination(
    flux: np.ndarray,
    flux_err: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    usable: np.ndarray | None = None,
    exclude: tuple[int, ...] = (),
    config: IlluminationConfig | None = None,
) -> IlluminationFit:
    """Fit the illumination pattern the stars of a drifting field trace, and its correction.

    Parameters
    ----------
    flux, flux_err, x, y : (n_epoch, n_star) arrays
        Fluxes and errors (any one unit) and positions (0-based pixels) of each star in
        each epoch's frame; NaN where not measured.
    usable : (n_epoch, n_star) bool array, optional
        False where a measurement must not enter the fit (bad flags).
    exclude : tuple of int
        Star columns left out of the fit (the targets: a transit is not illumination);
        the returned factor covers them too.
    """
    cfg = config or IlluminationConfig()
    flux = np.asarray(flux, float)
    ones = np.ones_like(flux)
    if cfg.mode == "off":
        return IlluminationFit(ones, False, "illumination correction off")
    err = np.asarray(flux_err, float)
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        sig = np.hypot(err / flux, cfg.error_floor_mag / 1.0857)
        ok = np.isfinite(flux) & (flux > 0) & np.isfinite(sig) & np.isfinite(x) & np.isfinite(y)
    if usable is not None:
        ok &= np.asarray(usable, bool)
    ok &= sig <= cfg.max_star_err_mag / 1.0857
    ok[:, list(exclude)] = False
    ok &= (ok.sum(axis=0) >= 3)[None, :]
    if not ok.any():
        return IlluminationFit(ones, False, "no star measured often enough to trace the illumination")
    span = np.where(
        ok.any(axis=0),
        np.hypot(
            np.nanmax(np.where(ok, x, np.nan), axis=0, initial=-np.inf)
            - np.nanmin(np.where(ok, x, np.nan), axis=0, initial=np.inf),
            np.nanmax(np.where(ok, y, np.nan), axis=0, initial=-np.inf)
            - np.nanmin(np.where(ok, y, np.nan), axis=0, initial=np.inf),
        ),
        0.0,
    )
    motion = float(np.median(span[ok.any(axis=0)]))
    if motion < cfg.min_motion_pix:
        return IlluminationFit(
            ones, False, f"the field moved {motion:.1f} px (< {cfg.min_motion_pix:g}): nothing to measure"
        )
    # positions normalised to -1..1 over where stars were measured
    allx, ally = x[ok], y[ok]
    cx, hx = (allx.max() + allx.min()) / 2.0, max((allx.max() - allx.min()) / 2.0, 1.0)
    cy, hy = (ally.max() + ally.min()) / 2.0, max((ally.max() - ally.min()) / 2.0, 1.0)
    u = np.where(np.isfinite(x), (x - cx) / hx, 0.0)
    v = np.where(np.isfinite(y), (y - cy) / hy, 0.0)
    design = _terms(u, v, cfg.order)  # (n_ep, n_star, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        logf = np.where(ok, np.log(np.where(ok, flux, 1.0)), 0.0)
    keep = ok.copy()
    star_var = np.zeros(flux.shape[1])  # extra variance per star (variables, bad stars)
    coef = np.zeros(design.shape[-1])
    chi2_drop, scale = 0.0, 1.0
    for _ in range(3):
        w = np.where(keep, 1.0 / (sig**2 + star_var[None, :]), 0.0)
        # one sweep for the log-fluxes and the polynomial terms together
        swept = _sweep(np.concatenate([logf[..., None], design], axis=-1), w)
        zy, zx = swept[..., 0], swept[..., 1:]
        sw = np.sqrt(w)[keep]
        a = zx[keep] * sw[:, None]
        b = zy[keep] * sw
        # a Gaussian prior on each coefficient keeps directions the motion hardly constrains
        # (stars that move little) at zero instead of letting noise make them huge
        ridge = np.eye(coef.size) / cfg.prior_amplitude
        coef, *_ = np.linalg.lstsq(
            np.vstack([a, ridge]), np.concatenate([b, np.zeros(coef.size)]), rcond=None
        )
        resid = zy - zx @ coef
        dof = max(int(keep.sum()) - int(keep.any(axis=0).sum()) - int(keep.any(axis=1).sum()) - coef.size, 1)
        chi2_res = float(np.sum(w[keep] * resid[keep] ** 2))
        scale = chi2_res / dof
        chi2_drop = (float(np.sum(w[keep] * zy[keep] ** 2)) - chi2_res) / scale
        # per-star excess variance, then clipping of single measurements
        count = keep.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            star_chi = np.where(count > 0, np.sum(np.where(keep, w * resid**2, 0.0), axis=0) / count, 0.0)
            typical = np.where(count > 0, np.sum(np.where(keep, sig**2, 0.0), axis=0) / count, 0.0)
            star_var = np.where(star_chi > 1.0, typical * (star_chi - 1.0), 0.0)
            full = np.where(keep, resid / np.sqrt(sig**2 + star_var[None, :]), 0.0)
        keep = keep & (np.abs(full) <= cfg.clip_sigma * max(np.sqrt(scale), 1.0))
    pattern = design @ coef  # ln-flux added by the illumination at each measured position
    measured = np.isfinite(flux) & np.isfinite(x) & np.isfinite(y)
    vals = pattern[ok]
    amplitude = float(np.exp(vals.max() - vals.min()) - 1.0) if vals.size else 0.0
    n_stars = int(keep.any(axis=0).sum())
    if cfg.mode == "auto" and chi2_drop < cfg.min_chi2_drop:
        return IlluminationFit(
            ones,
            False,
            f"illumination pattern not significant (chi2 drop {chi2_drop:.1f} < {cfg.min_chi2_drop:g})",
            chi2_drop,
            amplitude,
            n_stars,
        )
    factor = np.where(measured, np.exp(-pattern), 1.0)
    return IlluminationFit(
        factor,
        True,
        f"illumination pattern of {100 * amplitude:.2f} % removed (order {cfg.order}, {n_stars} stars, "
        f"field moved {motion:.0f} px, chi2 drop {chi2_drop:.0f})",
        chi2_drop,
        amplitude,
        n_stars,
    )
