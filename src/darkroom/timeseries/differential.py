"""Differential photometry against an automatically chosen, weighted comparison ensemble.

Works on a flux matrix ``flux[epoch, star]`` (NaN where a star was not measured). The
ensemble is built as follows:

1. **Candidates**: every star but the target that is measured without a bad flag in at
   least ``min_coverage`` of the epochs (so never saturated with the default 1.0), whose
   median magnitude is within ``max_mag_diff`` of the target's and, when colours are
   known, whose colour is within ``max_colour_diff``. The ``n_max`` closest in
   ``|dmag| + colour_weight |dcolour|`` are kept.
2. **Detrended relative flux** of each candidate ``s``: its flux normalised by its
   median, divided by the weighted ensemble of the *other* candidates (the common mode:
   transparency, airmass), normalised to 1 in each pointing segment (flat-field errors
   that move with the stars when the pointing jumps are not scatter), minus an optional
   polynomial in time per segment.
3. **Weights** ``w_s = 1 / sigma_s^2`` from the clipped scatter ``sigma_s`` of that
   relative flux (or ``w_s`` = median flux, i.e. the plain sum of fluxes, with
   ``weighting="flux"``). Weights are refined twice per round.
4. **Rejection**: the star with the largest excess ``sigma_s / sigma_expected_s``
   (expected from its flux errors) is dropped when that excess is more than
   ``excess_factor`` times the median excess of the ensemble (a variable, a star on a
   bad column, ...); rounds repeat until no star is dropped or ``min_comparisons`` remain.

The ensemble ``A(e) = sum_s w_s n_s(e) / sum_s w_s`` (over stars measured at epoch e)
is the relative transparency; ``ensemble_flux = A(e) * sum_s median_flux_s`` is the
ensemble's total flux (equal to the sum of the fluxes when all are measured).
``rel_flux = flux_target / A``, normalised to a median of 1, with
``rel_flux_err = rel_flux * sqrt((err_T / F_T)^2 + (err_A / A)^2)`` and
``err_A = sqrt(sum_s w_s^2 (err_s / median_s)^2) / sum_s w_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from darkroom.errors import BadInputError, SolveError
from darkroom.timeseries.settings import ComparisonConfig

__all__ = [
    "ComparisonConfig",
    "DifferentialResult",
    "check_curves",
    "clipped_std",
    "differential_photometry",
    "pointing_segments",
]

log = logging.getLogger(__name__)


@dataclass
class DifferentialResult:
    """Differential light curve of one target; arrays are per epoch unless noted."""

    rel_flux: np.ndarray
    rel_flux_err: np.ndarray
    ensemble_flux: np.ndarray  #: total flux of the ensemble [flux unit]
    ensemble_flux_err: np.ndarray
    ensemble_norm: np.ndarray  #: A(e): ensemble flux relative to its stars' medians
    n_comparisons: np.ndarray  #: comparison stars measured at each epoch
    comparison: np.ndarray  #: star indices (columns) in the final ensemble
    weights: np.ndarray  #: their normalised weights (sum 1)
    scatter: dict[int, float] = field(default_factory=dict)  #: star -> detrended rel. scatter
    rejected: dict[int, str] = field(default_factory=dict)  #: star -> why it left the ensemble
    candidates: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    normalisation: float = 1.0  #: median of flux_T / A used to normalise rel_flux


def check_curves(flux: np.ndarray, comparison: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each comparison star against the ensemble of the others (the observer's check stars).

    ``flux`` is (epoch, star); ``comparison`` the ensemble's star columns, ``weights`` theirs.
    Column ``k`` of the result is star ``comparison[k]``'s flux over the weighted mean of the
    other comparisons (each first divided by its own median), divided by its median: flat at 1
    for a constant star, so a variable or blended comparison shows. NaN where the star or all
    the others are missing; all NaN with fewer than two comparisons.
    """
    flux = np.asarray(flux, float)
    comparison = np.asarray(comparison, np.int64)
    out = np.full((flux.shape[0], comparison.size), np.nan)
    if comparison.size < 2:
        return out
    with np.errstate(all="ignore"):
        g = flux[:, comparison] / np.nanmedian(flux[:, comparison], axis=0)
        ok = np.isfinite(g)
        w = np.where(ok, np.asarray(weights, float)[None, :], 0.0)
        wg = np.where(ok, w * g, 0.0)
        total_w, total_wg = w.sum(axis=1), wg.sum(axis=1)
        for k in range(comparison.size):
            rest_w = total_w - w[:, k]
            others = np.where(rest_w > 0, (total_wg - wg[:, k]) / rest_w, np.nan)
            ratio = g[:, k] / others
            out[:, k] = ratio / np.nanmedian(ratio)
    return out


def clipped_std(values: np.ndarray, *, clip_sigma: float = 4.0, max_iters: int = 5) -> float:
    """Sample standard deviation after iterative clipping at ``clip_sigma`` around the median.

    Single outliers (a cosmic ray, a bad frame) leave; a smooth variation such as a
    sinusoid (all within 1.5 sigma of its centre) stays in full. NaN is ignored.
    """
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan")
    keep = np.ones(v.size, bool)
    for _ in range(max_iters):
        centre = np.median(v[keep])
        spread = np.std(v[keep])
        new = np.abs(v - centre) <= clip_sigma * spread
        if new.sum() < 2 or np.array_equal(new, keep):
            break
        keep = new
    return float(np.std(v[keep], ddof=1))


def pointing_segments(
    x: np.ndarray,
    y: np.ndarray,
    *,
    jump_pix: float,
    time: np.ndarray | None = None,
    drift_window: int = 4,
) -> np.ndarray:
    """Segment label per epoch, incremented where the pointing jumps (a re-pointing), not
    where it drifts.

    ``x, y`` are the target's pixel positions in time order (NaN epochs continue the
    current segment); ``time`` their epochs (any unit; default: equally spaced). The
    drift rate at each step is the median velocity of the ``drift_window`` steps on either
    side of it (a jump is an outlier among them); a step that departs from the drift by
    more than ``jump_pix`` starts a new segment. A field drifting 120 px over a night in
    small steps stays one segment; a guider re-acquisition of 10 px starts a new one.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    t = np.arange(x.size, dtype=float) if time is None else np.asarray(time, float)
    labels = np.zeros(x.size, dtype=np.int64)
    good = np.flatnonzero(np.isfinite(x) & np.isfinite(y) & np.isfinite(t))
    if good.size < 2:
        return labels
    dx, dy, dt = np.diff(x[good]), np.diff(y[good]), np.diff(t[good])
    with np.errstate(invalid="ignore", divide="ignore"):
        vx = np.where(dt > 0, dx / dt, np.nan)
        vy = np.where(dt > 0, dy / dt, np.nan)
    jumps = np.zeros(dx.size, bool)
    for k in range(dx.size):
        lo, hi = max(0, k - drift_window), min(dx.size, k + drift_window + 1)
        around = np.r_[lo:k, k + 1 : hi]
        if around.size == 0 or not np.isfinite(vx[around]).any():
            px = py = 0.0
        else:
            px = float(np.nanmedian(vx[around])) * dt[k]
            py = float(np.nanmedian(vy[around])) * dt[k]
        jumps[k] = np.hypot(dx[k] - px, dy[k] - py) > jump_pix
    seg_at_good = np.r_[0, np.cumsum(jumps)]
    # epochs between measured ones continue the segment of the last measured epoch
    current = 0
    pos = 0
    for i in range(x.size):
        if pos < good.size and good[pos] == i:
            current = int(seg_at_good[pos])
            pos += 1
        labels[i] = current
    return labels


def _segment_normalise(
    r: np.ndarray, segments: np.ndarray, time: np.ndarray | None, order: int
) -> np.ndarray:
    """Divide each segment of ``r`` (1-D, NaN allowed) by its median, remove a polynomial."""
    out = np.full_like(r, np.nan)
    for seg in np.unique(segments):
        sel = (segments == seg) & np.isfinite(r)
        if sel.sum() == 0:
            continue
        vals = r[sel] / np.median(r[sel])
        if order > 0 and time is not None and sel.sum() > order + 2:
            t = time[sel] - np.mean(time[sel])
            coef = np.polyfit(t, vals, order)
            vals = vals - np.polyval(coef, t) + 1.0
        out[sel] = vals
    return out


def _ensemble(norm: np.ndarray, valid: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted numerator and denominator per epoch over the given stars."""
    wv = np.where(valid, w[None, :], 0.0)
    num = np.sum(np.where(valid, norm, 0.0) * wv, axis=1)
    den = np.sum(wv, axis=1)
    return num, den


def differential_photometry(
    flux: np.ndarray,
    flux_err: np.ndarray,
    *,
    target: int,
    flags: np.ndarray | None = None,
    time: np.ndarray | None = None,
    mag: np.ndarray | None = None,
    colour: np.ndarray | None = None,
    comparison: Sequence[int] | None = None,
    segments: np.ndarray | None = None,
    config: ComparisonConfig | None = None,
) -> DifferentialResult:
    """Differential photometry of star ``target`` against a comparison ensemble.

    Parameters
    ----------
    flux, flux_err : (n_epoch, n_star) arrays
        Fluxes and errors [any one unit]; NaN where not measured.
    target : int
        Column of the target star.
    flags : (n_epoch, n_star) int array, optional
        :class:`~darkroom.phot.flags.PhotFlag` bits; ``config.bad_flags`` mark an epoch unusable.
    time : (n_epoch,) array, optional
        Times [d]; needed only for ``detrend_order > 0``.
    mag, colour : (n_star,) arrays, optional
        Magnitudes for the brightness match (default: from the median fluxes) and colour
        indices (NaN if unknown) for the colour match.
    comparison : sequence of int, optional
        User-named comparison stars (columns); then no automatic choice and, unless
        ``config.reject_named``, no rejection.
    segments : (n_epoch,) int array, optional
        Pointing segment labels (see :func:`pointing_segments`).

    Raises
    ------
    SolveError
        When fewer than ``min_comparisons`` usable comparison stars exist.
    """
    config = config or ComparisonConfig()
    flux = np.asarray(flux, float)
    flux_err = np.asarray(flux_err, float)
    if flux.ndim != 2 or flux.shape != flux_err.shape:
        raise BadInputError(
            f"flux and flux_err must be 2-D of one shape, got {flux.shape} and {flux_err.shape}"
        )
    n_ep, n_star = flux.shape
    if not 0 <= target < n_star:
        raise BadInputError(f"target column {target} outside 0..{n_star - 1}")
    valid = np.isfinite(flux) & np.isfinite(flux_err) & (flux > 0) & (flux_err >= 0)
    if flags is not None:
        valid &= (np.asarray(flags, np.int64) & config.bad_flags) == 0
    segs = np.zeros(n_ep, dtype=np.int64) if segments is None else np.asarray(segments)
    tt = None if time is None else np.asarray(time, float)
    coverage = valid.mean(axis=0)
    with np.errstate(invalid="ignore"):
        med = np.array(
            [np.median(flux[valid[:, s], s]) if valid[:, s].any() else np.nan for s in range(n_star)]
        )
    m = -2.5 * np.log10(med) if mag is None else np.asarray(mag, float)

    named = comparison is not None
    if named:
        cand = np.array([int(c) for c in comparison if int(c) != target], dtype=np.int64)  # type: ignore[union-attr]
        bad = [int(c) for c in cand if not valid[:, c].any()]
        if bad:
            raise BadInputError(f"named comparison stars {bad} have no usable measurement")
    else:
        ok = coverage >= config.min_coverage - 1e-12
        ok[target] = False
        dm = np.abs(m - m[target])
        ok &= np.isfinite(dm) & (dm <= config.max_mag_diff)
        rank = dm.copy()
        if colour is not None:
            col = np.asarray(colour, float)
            dc = np.abs(col - col[target])
            known = np.isfinite(dc)
            if config.max_colour_diff is not None:
                ok &= ~known | (dc <= config.max_colour_diff)
            rank = rank + config.colour_weight * np.where(known, dc, 0.0)
        idx = np.flatnonzero(ok)
        cand = idx[np.argsort(rank[idx], kind="stable")][: config.n_max]
    if cand.size < config.min_comparisons:
        raise SolveError(
            f"differential photometry: {cand.size} usable comparison stars, need {config.min_comparisons} "
            f"(coverage >= {config.min_coverage}, |dmag| <= {config.max_mag_diff})",
            n_comparisons=int(cand.size),
        )

    norm = flux[:, cand] / med[cand]
    norm_err = flux_err[:, cand] / med[cand]
    vc = valid[:, cand]
    with np.errstate(invalid="ignore"):
        expected = np.sqrt(
            np.array(
                [np.nanmedian(np.where(vc[:, j], norm_err[:, j] ** 2, np.nan)) for j in range(cand.size)]
            )
        )
    active = np.ones(cand.size, bool)
    w = 1.0 / np.maximum(expected, 1e-6) ** 2
    if config.weighting == "flux":
        w = med[cand].copy()
    scatter = np.full(cand.size, np.nan)
    rejected: dict[int, str] = {}

    def measure(active: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Detrended relative-flux scatter of each active star against the others."""
        num, den = _ensemble(norm[:, active], vc[:, active], w[active])
        sig = np.full(cand.size, np.nan)
        for j in np.flatnonzero(active):
            own_w = np.where(vc[:, j], w[j], 0.0)
            others_num = num - own_w * np.where(vc[:, j], norm[:, j], 0.0)
            others_den = den - own_w
            with np.errstate(invalid="ignore", divide="ignore"):
                ref = np.where(others_den > 0, others_num / others_den, np.nan)
                r = np.where(vc[:, j], norm[:, j] / ref, np.nan)
            r = _segment_normalise(r, segs, tt, config.detrend_order)
            sig[j] = clipped_std(r, clip_sigma=config.clip_sigma)
        return sig

    do_reject = (not named) or config.reject_named
    while True:
        for _ in range(2):
            scatter = np.where(active, measure(active, w), scatter)
            if config.weighting == "inverse_variance":
                good = active & np.isfinite(scatter) & (scatter > 0)
                w = np.where(good, 1.0 / np.where(good, scatter, 1.0) ** 2, w)
        if not do_reject or active.sum() <= config.min_comparisons:
            break
        excess = scatter / expected
        idx_act = np.flatnonzero(active & np.isfinite(excess))
        if idx_act.size == 0:
            break
        med_excess = float(np.median(excess[idx_act]))
        worst = idx_act[np.argmax(excess[idx_act])]
        reason = ""
        if excess[worst] > config.excess_factor * med_excess:
            reason = (
                f"scatter {scatter[worst]:.4g} is {excess[worst] / med_excess:.2f}x the ensemble's excess"
            )
        elif config.max_scatter is not None and np.nanmax(scatter[idx_act]) > config.max_scatter:
            worst = idx_act[np.nanargmax(scatter[idx_act])]
            reason = f"scatter {scatter[worst]:.4g} > max_scatter {config.max_scatter}"
        if not reason:
            break
        active[worst] = False
        rejected[int(cand[worst])] = reason
        log.debug("comparison star %d rejected: %s", cand[worst], reason)

    use = np.flatnonzero(active)
    wu = w[use]
    num, den = _ensemble(norm[:, use], vc[:, use], wu)
    with np.errstate(invalid="ignore", divide="ignore"):
        ens_norm = np.where(den > 0, num / den, np.nan)
        wv = np.where(vc[:, use], wu[None, :], 0.0)
        ens_norm_err = np.sqrt(np.sum(wv**2 * np.where(vc[:, use], norm_err[:, use], 0.0) ** 2, axis=1)) / den
        total = float(np.sum(med[cand[use]]))
        ens_flux = ens_norm * total
        ens_flux_err = ens_norm_err * total
        raw = np.where(valid[:, target], flux[:, target], np.nan) / ens_norm
        norm_factor = float(np.nanmedian(raw)) if np.isfinite(raw).any() else float("nan")
        rel = raw / norm_factor
        rel_err = np.abs(rel) * np.sqrt(
            (flux_err[:, target] / flux[:, target]) ** 2 + (ens_norm_err / ens_norm) ** 2
        )
    n_comp = np.sum(vc[:, use], axis=1).astype(np.int64)
    return DifferentialResult(
        rel_flux=rel,
        rel_flux_err=rel_err,
        ensemble_flux=ens_flux,
        ensemble_flux_err=ens_flux_err,
        ensemble_norm=ens_norm,
        n_comparisons=n_comp,
        comparison=cand[use],
        weights=wu / wu.sum(),
        scatter={int(cand[j]): float(scatter[j]) for j in range(cand.size) if np.isfinite(scatter[j])},
        rejected=rejected,
        candidates=cand,
        normalisation=norm_factor,
    )
