"""Read noise, gain, linearity and saturation from bias and flat frames.

Units: signals and variances in adu and adu^2 above the bias, gain in
electron/adu, read noise in electrons (``*_e``) or adu (``*_adu``).

* :func:`two_frame_gain_read_noise` is the textbook estimate from two biases and
  two flats of equal exposure (Janesick 2001, "Scientific CCDs", ch. 4)::

      gain = ((F1 + F2) - (B1 + B2)) / (var(F1 - F2) - var(B1 - B2))
      read_noise_e = gain * std(B1 - B2) / sqrt(2)

* :func:`photon_transfer_curve` fits ``var = rn_adu**2 + signal / gain`` over many
  flat pairs at different levels. A pair need not have equal levels: the second
  frame is scaled by ``r = m_a / m_b`` so that fixed-pattern (flat-field) structure
  cancels, and the model of the difference is
  ``var(F_a - r F_b) = (1 + r**2) rn**2 + (m_a + r**2 m_b) / gain``. Pairs of equal
  exposure time are differenced unscaled (dark current and hot pixels cancel
  exactly). The read noise from the bias pair enters as the point at zero signal.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from darkroom.errors import BadInputError, CalibrationError
from darkroom.robust import robust_std

from ._stats import clipped_mean_std

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = [
    "GainReadNoise",
    "LinearityResult",
    "PTCConfig",
    "PTCResult",
    "gain_from_flat_pair",
    "linearity_from_flats",
    "photon_transfer_curve",
    "sky_level_and_noise",
    "two_frame_gain_read_noise",
]

log = logging.getLogger(__name__)

Region = tuple[slice, slice]


@dataclass(frozen=True)
class GainReadNoise:
    """Gain [electron/adu] and read noise [electron and adu] with the numbers behind them."""

    gain_e_per_adu: float
    read_noise_e: float
    read_noise_adu: float
    signal_adu: float
    n_pixels: int


def _region(a: np.ndarray, region: Region | None) -> np.ndarray:
    arr = np.asarray(a)
    return np.asarray(arr if region is None else arr[region], dtype=np.float64)


def gain_from_flat_pair(
    flat1: np.ndarray,
    flat2: np.ndarray,
    *,
    read_noise_adu: float,
    region: Region | None = None,
    n_sigma: float = 5.0,
) -> float:
    """Gain [electron/adu] from two bias-subtracted flats and a known read noise [adu].

    The second flat is scaled to the level of the first so the flat-field pattern
    cancels; ``var(F1 - r F2) = (1 + r^2) rn^2 + m1 (1 + r) / gain``.
    """
    a = _region(flat1, region)
    b = _region(flat2, region)
    m1, m2 = float(np.median(a)), float(np.median(b))
    if m1 <= 0 or m2 <= 0:
        raise CalibrationError(f"flat levels must be positive above bias, got {m1:.4g} and {m2:.4g} adu")
    r = m1 / m2
    _, s, _ = clipped_mean_std(a - r * b, n_sigma=n_sigma)
    shot = s * s - (1 + r * r) * read_noise_adu**2
    if shot <= 0:
        raise CalibrationError(
            f"flat pair variance {s * s:.4g} adu^2 does not exceed the read noise term; levels {m1:.4g} adu"
        )
    return float(m1 * (1 + r) / shot)


def two_frame_gain_read_noise(
    bias1: np.ndarray,
    bias2: np.ndarray,
    flat1: np.ndarray,
    flat2: np.ndarray,
    *,
    region: Region | None = None,
    n_sigma: float = 5.0,
) -> GainReadNoise:
    """The textbook (Janesick) gain and read noise from two biases and two flats.

    ``region`` (0-based ``(rows, cols)`` slices) should be a uniformly illuminated
    part of the active area. Means are clipped means; variances of the
    differences are clipped at ``n_sigma`` (cosmic rays, hot pixels).
    """
    b1, b2, f1, f2 = (_region(x, region) for x in (bias1, bias2, flat1, flat2))
    mb1, _, _ = clipped_mean_std(b1, n_sigma=n_sigma)
    mb2, _, _ = clipped_mean_std(b2, n_sigma=n_sigma)
    mf1, _, _ = clipped_mean_std(f1, n_sigma=n_sigma)
    mf2, _, _ = clipped_mean_std(f2, n_sigma=n_sigma)
    _, sb, _ = clipped_mean_std(b1 - b2, n_sigma=n_sigma)
    _, sf, n_px = clipped_mean_std(f1 - f2, n_sigma=n_sigma)
    signal = (mf1 + mf2) - (mb1 + mb2)
    denom = sf * sf - sb * sb
    if signal <= 0 or denom <= 0:
        raise CalibrationError(
            f"two-frame estimate impossible: flat signal {signal / 2:.4g} adu, excess variance {denom:.4g} adu^2"
        )
    gain = signal / denom
    rn_adu = sb / np.sqrt(2)
    return GainReadNoise(
        gain_e_per_adu=float(gain),
        read_noise_e=float(gain * rn_adu),
        read_noise_adu=float(rn_adu),
        signal_adu=float(signal / 2),
        n_pixels=int(n_px),
    )


class PTCConfig(BaseModel):
    """Photon-transfer-curve fit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_sigma: float = Field(5.0, gt=1, le=100, description="clipping of each pair difference [sigma]")
    max_level_ratio: float = Field(
        2.5, gt=1, le=100, description="largest level ratio of two flats paired across exposure times [1]"
    )
    max_fit_deviation: float = Field(
        0.15,
        gt=0,
        le=10,
        description="a pair deviating more than this fraction from the model ends the linear range [1]",
    )
    min_signal_adu: float = Field(0.0, ge=0, description="pairs below this mean level are not fitted [adu]")
    poly_order: int = Field(
        2,
        ge=-1,
        le=6,
        description="order of the 2-D polynomial removed from each pair difference (illumination "
        "shape changes between exposures); -1 removes nothing",
    )
    mask_hot_n_sigma: float = Field(
        5.0,
        gt=0,
        le=1000,
        description="pixels above the local level by this many sigma in the brightest good flat are masked [sigma]",
    )


@dataclass(frozen=True)
class PTCResult:
    """A photon transfer curve and its fit.

    ``points`` has one row per pair: ``exptime_a``, ``exptime_b`` [s], ``signal_adu``
    (noise-weighted mean level of the pair above bias), ``variance_adu2`` (per-frame
    variance at that level, i.e. the pair variance divided by ``1 + r**2``),
    ``ratio`` (r), ``scaled`` (whether F_b was scaled), ``used`` (in the fit) and
    ``residual`` (fractional deviation from the model).
    ``full_well_adu`` is the highest signal still on the curve (end of the linear
    range); ``saturation_adu`` the plateau level where flats stop rising.
    """

    gain_e_per_adu: float
    read_noise_e: float
    read_noise_adu: float
    gain_err: float
    read_noise_err_adu: float
    full_well_adu: float
    saturation_adu: float | None
    points: Table


def _hot_mask(flat: np.ndarray, n_sigma: float) -> np.ndarray:
    from scipy.ndimage import binary_dilation, median_filter

    res = flat - median_filter(flat, size=7, mode="nearest")
    s = robust_std(res)
    return binary_dilation(np.abs(res) > n_sigma * max(s, 1e-12))


def photon_transfer_curve(
    biases: Sequence[np.ndarray],
    flats: Sequence[np.ndarray],
    exptimes_s: Sequence[float],
    *,
    region: Region | None = None,
    config: PTCConfig | None = None,
) -> PTCResult:
    """Fit gain and read noise over flats at many levels (photon transfer curve).

    Parameters
    ----------
    biases
        At least two raw bias frames (adu).
    flats
        Raw flats (adu) at several exposure times; repeats at one time are paired
        unscaled, the others with the neighbouring level (ratio up to
        ``max_level_ratio``), scaled.
    exptimes_s
        Exposure time of each flat [s].
    region
        0-based ``(rows, cols)`` slices of a well-illuminated part of the active
        area (exclude overscan and shadowed edges).

    The fit is weighted least squares of the pair variances (relative error
    ``sqrt(2 / n_pixels)``) on ``(1 + r^2) rn^2 + (m_a + r^2 m_b) / gain``, starting
    from the low half of the levels and extending upwards while the next pair stays
    within ``max_fit_deviation`` of the model; the first pair beyond marks the end
    of the linear range. The bias-pair variance is the point at zero signal.
    """
    from astropy.table import Table

    cfg = config or PTCConfig()
    if len(biases) < 2:
        raise BadInputError(f"a photon transfer curve needs two biases or more, got {len(biases)}")
    if len(flats) != len(exptimes_s):
        raise BadInputError(f"{len(flats)} flats but {len(exptimes_s)} exposure times")
    if len(flats) < 2:
        raise BadInputError("a photon transfer curve needs two flats or more")
    b = [_region(x, region) for x in biases]
    bias_mean = np.mean(b, axis=0)
    flat_list = [_region(f, region) - bias_mean for f in flats]
    times = np.asarray(exptimes_s, dtype=np.float64)
    levels = np.array([float(np.median(f)) for f in flat_list])

    # read noise from the bias pairs: the zero-signal point
    bias_vars = []
    for i in range(len(b) - 1):
        _, s, _n_b = clipped_mean_std(b[i] - b[i + 1], n_sigma=cfg.n_sigma)
        bias_vars.append(s * s / 2)
    rn2_bias = float(np.mean(bias_vars))
    n_pix = b[0].size

    # saturation plateau: flats whose level is within 2% of the highest level while their time is not
    order = np.argsort(times, kind="stable")
    saturation = _plateau(levels[order], times[order])
    sat_cut = saturation * 0.98 if saturation is not None else np.inf

    # hot-pixel mask from the brightest flat below the plateau
    below = np.where(levels < sat_cut)[0]
    ref = flat_list[below[np.argmax(levels[below])]] if below.size else flat_list[int(np.argmin(levels))]
    good = ~_hot_mask(ref, cfg.mask_hot_n_sigma)

    # pairs: repeats at one exposure time, else neighbours in level
    pairs: list[tuple[int, int, bool]] = []
    by_time: dict[float, list[int]] = {}
    for i, t in enumerate(times):
        by_time.setdefault(round(float(t), 6), []).append(i)
    for idx in by_time.values():
        idx = sorted(idx, key=lambda k: levels[k])
        for i, j in itertools.pairwise(idx):
            pairs.append((i, j, False))
    lvl_order = np.argsort(levels, kind="stable")
    for i, j in itertools.pairwise(lvl_order):
        if round(float(times[i]), 6) == round(float(times[j]), 6):
            continue
        if levels[i] <= 0 or levels[j] / levels[i] > cfg.max_level_ratio:
            continue
        pairs.append((int(i), int(j), True))

    design = _poly_design(flat_list[0].shape, cfg.poly_order, good)
    rows = []
    for i, j, scaled in pairs:
        fa, fb = flat_list[i], flat_list[j]
        ma, mb = levels[i], levels[j]
        if ma <= 0 or mb <= 0:
            continue
        r = ma / mb if scaled else 1.0
        d = (fa - r * fb)[good]
        if design is not None:
            keep = np.abs(d - np.median(d)) < 10 * np.std(d)
            coef, *_ = np.linalg.lstsq(design[keep], d[keep], rcond=None)
            d = d - design @ coef
        _, s, _ = clipped_mean_std(d, n_sigma=cfg.n_sigma)
        c_rn = 1 + r * r
        shot = ma + r * r * mb
        rows.append((times[i], times[j], shot / c_rn, s * s / c_rn, r, scaled, c_rn, shot, s * s))
    if not rows:
        raise CalibrationError("no usable flat pair for the photon transfer curve")
    rows.sort(key=lambda x: x[2])
    sig = np.array([x[2] for x in rows])
    var_pair = np.array([x[8] for x in rows])
    c_rn = np.array([x[6] for x in rows])
    c_shot = np.array([x[7] for x in rows])
    ok_level = (sig >= cfg.min_signal_adu) & (sig < sat_cut)

    # design: var_pair = c_rn * rn2 + c_shot * (1/gain); plus bias point: 2 rn2 = var(B1-B2)
    rel_err = np.sqrt(2.0 / max(int(good.sum()), 1))
    x_bias = np.array([[2.0, 0.0]])
    y_bias = np.array([2 * rn2_bias])
    w_bias = 1.0 / (y_bias * np.sqrt(2.0 / n_pix))

    def fit(sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = np.vstack([np.column_stack([c_rn[sel], c_shot[sel]]), x_bias])
        y = np.concatenate([var_pair[sel], y_bias])
        w = np.concatenate([1.0 / (var_pair[sel] * rel_err), w_bias])
        coef, *_ = np.linalg.lstsq(a * w[:, None], y * w, rcond=None)
        cov = np.linalg.inv((a * w[:, None]).T @ (a * w[:, None]))
        chi2 = float(np.sum(((a @ coef - y) * w) ** 2))
        dof = max(len(y) - 2, 1)
        return coef, cov * max(chi2 / dof, 1.0)

    cand = np.where(ok_level)[0]
    if cand.size < 1:
        raise CalibrationError("no flat pair below saturation for the photon transfer curve")
    n_start = max(1, (cand.size + 1) // 2)
    used = np.zeros(len(rows), dtype=bool)
    used[cand[:n_start]] = True
    coef, cov = fit(used)
    # drop low-half outliers once, then extend upwards while the model holds
    model = c_rn * coef[0] + c_shot * coef[1]
    resid = var_pair / model - 1
    bad_low = used & (np.abs(resid) > cfg.max_fit_deviation)
    if bad_low.any() and (used & ~bad_low).sum() >= 1:
        used &= ~bad_low
        coef, cov = fit(used)
    full_well = float(sig[used].max())
    for k in cand[n_start:]:
        pred = c_rn[k] * coef[0] + c_shot[k] * coef[1]
        if abs(var_pair[k] / pred - 1) > cfg.max_fit_deviation:
            break
        used[k] = True
        coef, cov = fit(used)
        full_well = float(sig[k])
    rn2, inv_gain = float(coef[0]), float(coef[1])
    if inv_gain <= 0 or rn2 <= 0:
        raise CalibrationError(
            f"photon transfer fit is unphysical: rn^2={rn2:.4g} adu^2, 1/gain={inv_gain:.4g}"
        )
    gain = 1.0 / inv_gain
    rn_adu = float(np.sqrt(rn2))
    model = c_rn * rn2 + c_shot * inv_gain
    table = Table(
        {
            "exptime_a": [x[0] for x in rows],
            "exptime_b": [x[1] for x in rows],
            "signal_adu": sig,
            "variance_adu2": np.array([x[3] for x in rows]),
            "ratio": np.array([x[4] for x in rows]),
            "scaled": np.array([x[5] for x in rows]),
            "used": used,
            "residual": var_pair / model - 1,
        }
    )
    table["signal_adu"].unit = "adu"
    table["variance_adu2"].unit = "adu2"
    table["exptime_a"].unit = table["exptime_b"].unit = "s"
    gain_err = float(np.sqrt(cov[1, 1]) / inv_gain**2)
    rn_err = float(np.sqrt(cov[0, 0]) / (2 * rn_adu))
    log.debug("PTC: gain %.4g e/adu, read noise %.4g adu over %d pairs", gain, rn_adu, int(used.sum()))
    return PTCResult(
        gain_e_per_adu=gain,
        read_noise_e=gain * rn_adu,
        read_noise_adu=rn_adu,
        gain_err=gain_err,
        read_noise_err_adu=rn_err,
        full_well_adu=full_well,
        saturation_adu=saturation,
        points=table,
    )


def _poly_design(shape: tuple[int, int], order: int, good: np.ndarray) -> np.ndarray | None:
    """Design matrix of a 2-D polynomial (total degree ``order``) on the ``good`` pixels."""
    if order < 0:
        return None
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    u = (xx[good] / max(nx - 1, 1)) * 2 - 1
    v = (yy[good] / max(ny - 1, 1)) * 2 - 1
    cols = [u**i * v**j for i in range(order + 1) for j in range(order + 1 - i)]
    return np.column_stack(cols)


def _plateau(levels: np.ndarray, times: np.ndarray) -> float | None:
    """Level where the signal stops growing with exposure time, or None.

    The plateau is the median level of the frames whose level is within 3% of the
    highest and which include at least two different exposure times (a level
    reached by two exposure times is not a rising signal).
    """
    top = float(np.max(levels))
    near = levels >= 0.97 * top
    if np.unique(np.round(times[near], 6)).size < 2:
        return None
    return float(np.median(levels[near]))


@dataclass(frozen=True)
class LinearityResult:
    """Signal versus exposure time.

    ``rate_adu_per_s`` is the slope through the origin fitted on the frames below
    ``linear_fraction`` of saturation; ``max_deviation`` the largest fractional
    residual of those frames; ``saturation_adu`` the plateau level (None when no
    frame saturates); ``table`` one row per frame (exptime, signal, residual).
    """

    rate_adu_per_s: float
    offset_adu: float
    max_deviation: float
    rms_deviation: float
    saturation_adu: float | None
    table: Table


def linearity_from_flats(
    flats: Sequence[np.ndarray],
    exptimes_s: Sequence[float],
    *,
    bias: np.ndarray | float = 0.0,
    region: Region | None = None,
    linear_fraction: float = 0.8,
) -> LinearityResult:
    """Signal of each flat (median over ``region``, above ``bias``) against exposure time.

    A straight line ``signal = offset + rate * t`` is fitted (least squares) to the
    frames below ``linear_fraction`` of the saturation plateau; the residuals
    measure the non-linearity *and* any drift of the lamp, which this test cannot
    tell apart.
    """
    from astropy.table import Table

    if len(flats) != len(exptimes_s) or len(flats) < 3:
        raise BadInputError("linearity needs three flats or more, each with its exposure time")
    times = np.asarray(exptimes_s, dtype=np.float64)
    b = bias if np.isscalar(bias) else _region(bias, region)
    sig = np.array([float(np.median(_region(f, region) - b)) for f in flats])
    order = np.argsort(times, kind="stable")
    sat = _plateau(sig[order], times[order])
    lim = linear_fraction * sat if sat is not None else np.inf
    sel = sig < lim
    if sel.sum() < 2:
        raise CalibrationError("fewer than two flats below saturation for the linearity fit")
    a = np.column_stack([np.ones(sel.sum()), times[sel]])
    (offset, rate), *_ = np.linalg.lstsq(a, sig[sel], rcond=None)
    model = offset + rate * times
    with np.errstate(divide="ignore", invalid="ignore"):
        resid = np.where(model > 0, sig / model - 1, np.nan)
    # judge the deviation on frames well above the offset (short exposures are noise-dominated)
    judged = sel & (sig > 0.05 * np.max(sig[sel]))
    dev = resid[judged] if judged.any() else resid[sel]
    table = Table({"exptime_s": times, "signal_adu": sig, "residual": resid, "used": sel})
    return LinearityResult(
        rate_adu_per_s=float(rate),
        offset_adu=float(offset),
        max_deviation=float(np.nanmax(np.abs(dev))),
        rms_deviation=float(np.sqrt(np.nanmean(dev**2))),
        saturation_adu=sat,
        table=table,
    )


def sky_level_and_noise(image: np.ndarray, *, max_side: int = 512) -> tuple[float, float]:
    """Sky level [adu] (median) and pixel-to-pixel sky noise [adu] of an image.

    The noise comes from differences of horizontally adjacent pixels (MAD / sqrt 2), which
    gradients, vignetting and the few pixels on stars do not inflate. A central cut of at
    most ``max_side`` x ``max_side`` pixels is used.
    """
    img = np.asarray(image, dtype=np.float32)
    ny, nx = img.shape
    y0, x0 = max(0, (ny - max_side) // 2), max(0, (nx - max_side) // 2)
    cut = img[y0 : y0 + max_side, x0 : x0 + max_side]
    finite = np.isfinite(cut)
    if finite.sum() < 16:
        raise BadInputError("too few finite pixels to measure the sky noise")
    level = float(np.median(cut[finite]))
    diff = (cut[:, 1:] - cut[:, :-1]).ravel()
    diff = diff[np.isfinite(diff)]
    return level, robust_std(diff) / math.sqrt(2.0)
