"""Transients and flares: single-epoch S/N and a matched filter over a bank of durations.

Works on irregular, multi-season, multi-band sampling. Fluxes are taken relative to a
baseline per band and season (a longer gap than ``season_gap_days`` starts a new season:
zero points and slow drifts differ):

* ordinary photometry: ``x = 10^(-0.4 (m - m0)) - 1`` with ``m0`` the median magnitude
  weighted by the flux errors (an event is a fractional brightening; magnitude-error weights
  would favour bright epochs, whose magnitude errors shrink while their flux errors stay);
* difference photometry (alert light curves; baseline flux zero): ``x = 10^(-0.4 (m - 25))``.

Errors ``sigma = (1 + x) dm / 1.0857`` (ordinary) or ``x dm / 1.0857`` (difference). Where the
epochs' limiting magnitudes ``m_lim`` are given (ZTF ``limitmag``; S/N ``limit_snr`` there), an
ordinary epoch's error is at least the image's own noise, ``10^(-0.4 (m_lim - m0)) /
limit_snr``: near the survey limit the reported errors of a faint star shrink as its measured
flux rises while the image's noise does not, and only the upward fluctuations of a star at
the limit are measured at all (Malmquist bias), which would make flares. For ordinary
photometry the errors of each band and season are then scaled up by the spread of the
normalised differences of consecutive epochs when that exceeds 1 (the larger of the MAD and
the +-2-sigma quantile width: heavy tails count, :func:`_difference_spread`), so
underestimated survey errors do not make events (differences cancel the events themselves,
which a spread about the median would count as noise).

Templates ``s(t; t_p, D, q)``: a Gaussian rise of width ``q D`` before the peak ``t_p`` and an
exponential decline of e-folding ``D`` after it (``q = 1``: nearly symmetric, microlensing-like;
``q = 0.3``: supernova-like; ``q = 0.05``: flare-like), for durations ``D`` on a log grid. The
model of a template at a trial peak time is ``x = A_band s + B_band,season``: one amplitude
per band, one baseline per band and season (for difference photometry ``B = 0``), fitted by
weighted least squares: ``A_b = S_b / N_b`` with ``S_b = sum (s - <s>) x / sigma^2`` and
``N_b = sum (s - <s>)^2 / sigma^2`` (``<s>`` the weighted mean within each season). The
detection statistic is ``snr = sqrt(sum_b max(S_b, 0)^2 / N_b)`` (the matched-filter S/N; the
single-epoch S/N is the limit of a template narrower than the sampling). A band enters only
if it has an epoch within the event's extent ``[t_p - 3 q D, t_p + 3 D]``: fitted to the far
tail alone, its amplitude would be free and huge and its S/N just its nearest epoch's noise.
The best template sets the event's peak time (refined on a fine grid; it may lie before the
first epoch, where the template extrapolates a rise that was missed), its duration, and its
peak magnitude (the brightest band's ``A_b``).

For ordinary photometry each template's S/N is divided by the robust width (MAD) of its
signed output over the trial times the light curve samples, when that exceeds 1 (the
*noise factor*): correlated noise (nightly zero points, seasonal drifts) makes dimmings as
often as brightenings, and this keeps the 5-sigma threshold honest on real survey light
curves. Near the strongest response the width is measured off it (an event's own output is
no noise), and a template is searched only if the light curve samples at least
``noise_blocks`` of its extents (with fewer, its noise cannot be told from the light curve's
own slow drifts). :class:`NoiseModel` gives the S/N the finder would report for a known
signal added to a light curve (the injection-recovery S/N).

One light curve can hold several events only if it returns to the baseline between them
(an epoch with single-epoch S/N < ``baseline_snr``), so an alert light curve, which has no
baseline epochs, holds at most one event per season.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Event",
    "NoiseModel",
    "Shape",
    "TransientConfig",
    "bank",
    "bank_shape",
    "find_transients",
    "relative_flux",
    "template",
]

_K = 2.5 / math.log(10.0)
DIFF_ZP = 25.0


class TransientConfig(BaseModel):
    """Settings of :func:`find_transients`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    snr_threshold: float = Field(5.0, gt=0, description="matched-filter S/N of a detection")
    min_duration_d: float = Field(0.02, gt=0, description="shortest template decline time [day]")
    max_duration_d: float = Field(60.0, gt=0, description="longest template decline time [day]")
    duration_step: float = Field(1.5, gt=1, description="ratio of consecutive durations in the bank")
    rise_ratios: tuple[float, ...] = Field(
        (1.0, 0.3, 0.05), description="rise width / decline time of the template shapes"
    )
    min_epochs: int = Field(3, ge=1, description="fewer good epochs: no search")
    min_epochs_in_event: int = Field(1, ge=1, description="epochs within the event's duration needed")
    baseline_snr: float = Field(2.0, gt=0, description="an epoch below this single-epoch S/N is at baseline")
    max_events: int = Field(5, ge=1, description="events kept per light curve at most")
    season_gap_days: float | None = Field(
        60.0, gt=0, description="a longer gap starts a new season with its own baseline; None: one"
    )
    extrapolate_unsampled_peak: bool = Field(
        False, description="when no band samples its maximum, take the template's (extrapolated) peak"
    )
    peak_window_d: float = Field(
        12.0, gt=0, description="epochs within this of the brightest one enter the peak parabola [day]"
    )
    peak_model: Literal["data", "snia"] = Field(
        "data",
        description="time of an event's maximum: 'data', from the epochs (a parabola about the brightest "
        "one); 'snia', the mean of that and the maximum of a type Ia supernova template fitted to the "
        "event (darkroom.analysis.snia; needs sncosmo), for supernova searches on gappy survey sampling",
    )
    noise_blocks: int | None = Field(
        8,
        ge=2,
        description="with the noise factor (normalise), a template is searched only if the light curve "
        "samples at least this many of its event extents (fewer give no measure of the noise on its "
        "time scale), and the factor leaves out the strongest response when the rest still does; "
        "None: every template, the factor over all trial times",
    )
    scale_errors: bool = Field(True, description="scale errors up by the robust spread (ordinary photometry)")
    limit_snr: float | None = Field(
        5.0,
        gt=0,
        description="S/N at an epoch's limiting magnitude (ZTF limitmag: 5), which sets an error floor "
        "when limiting magnitudes are given; None: no floor",
    )
    normalise: bool = Field(
        True,
        description="divide each template's S/N by the robust width (MAD) of its signed output over the "
        "light curve when > 1 (ordinary photometry)",
    )


@dataclass
class Event:
    """One detected event."""

    mjd_peak: float  #: time of peak [same scale as the input]
    duration_d: float  #: template decline time [day]
    rise_ratio: float  #: template rise width / decline time
    snr: float  #: matched-filter S/N
    peak_mag: float  #: magnitude at peak in ``band``
    band: str  #: the band with the brightest peak
    peak_mags: dict[str, float] = field(default_factory=dict)  #: peak magnitude per band
    amplitude: dict[str, float] = field(default_factory=dict)  #: per band, relative (or difference) flux
    n_epochs: int = 0  #: epochs within [peak - 3 rise, peak + 3 decline]
    max_single_snr: float = 0.0  #: best single-epoch S/N within the event


def template(t: np.ndarray, t_peak: np.ndarray | float, duration_d: float, rise_ratio: float) -> np.ndarray:
    """Event shape, 1 at the peak ``t_peak`` [day].

    ``rise_ratio >= 1``: a symmetric Gaussian of width ``duration_d`` (microlensing-like);
    otherwise a Bazin et al. (2009) rise and fall, ``exp(-x / tau_f) / (1 + exp(-x / tau_r))``
    with ``tau_f = duration_d`` and ``tau_r = rise_ratio * duration_d`` (supernova-like for
    ratios ~0.1-0.3, flare-like for small ratios), shifted so its maximum is at ``t_peak``.
    """
    dt = np.asarray(t, float) - np.asarray(t_peak, float)
    if rise_ratio >= 1.0:
        return np.exp(-0.5 * (dt / duration_d) ** 2)
    tf, tr = duration_d, rise_ratio * duration_d
    x_peak = tr * math.log(tf / tr - 1.0)
    x = np.clip(dt + x_peak, -60 * tr, None)
    peak = math.exp(-x_peak / tf) / (1.0 + math.exp(-x_peak / tr))
    return np.exp(-x / tf) / (1.0 + np.exp(-x / tr)) / peak


#: consecutive differences needed before their 2-sigma quantiles enter the error scale: a short
#: event adds at most ~2 large differences per side, which then lie beyond the 2.3 % quantiles
_TAIL_MIN_DIFFS = 100
_TAIL_Z = 2.0  #: the quantiles at +-2 sigma of a normal distribution (2.3 % and 97.7 %)


def _difference_spread(t: np.ndarray, x: np.ndarray, sig: np.ndarray) -> float:
    """Width of the normalised differences of epochs consecutive in time (1 when the errors are
    right). Differences cancel anything slower than the cadence, so an event does not count as
    noise, unlike the spread about the median, which a long event widens.

    The width is the larger of the MAD (the core) and, with at least ``_TAIL_MIN_DIFFS``
    differences, the half distance between the 2.3 % and 97.7 % quantiles over 2 (the
    shoulders): survey photometry often has a normal core with heavy tails (blends in poor
    seeing, bad subtractions; on the IRSA reply one season's r band has 9 % of its epochs
    beyond 3 sigma where its MAD says 1.3), and a 5-sigma threshold is only honest if the
    errors reach those shoulders. For normal noise both estimates are 1."""
    order = np.argsort(t, kind="stable")
    dz = np.diff(x[order]) / np.hypot(sig[order][1:], sig[order][:-1])
    if dz.size < 7:
        return math.nan
    width = 1.4826 * float(np.median(np.abs(dz - np.median(dz))))
    if dz.size >= _TAIL_MIN_DIFFS:
        p = 100.0 * 0.5 * math.erfc(_TAIL_Z / math.sqrt(2.0))
        lo, hi = np.percentile(dz, [p, 100.0 - p])
        width = max(width, float(hi - lo) / (2.0 * _TAIL_Z))
    return width


def relative_flux(
    mag: np.ndarray,
    magerr: np.ndarray,
    bands: np.ndarray,
    *,
    difference: bool,
    scale_errors: bool = True,
    times: np.ndarray | None = None,
    limit_mag: np.ndarray | None = None,
    limit_snr: float = 5.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(x, sigma, m0 per band): flux relative to the baseline and its error (module docstring).

    With ``times`` [day], the error scale comes from differences of consecutive epochs
    (:func:`_difference_spread`); without, from the spread about the median. With
    ``limit_mag`` [mag] per epoch (NaN: unknown), ordinary photometry's errors are at least
    the flux at the limit over ``limit_snr`` (the S/N that defines the limit), relative to
    the baseline's flux.
    """
    x = np.empty_like(mag)
    sig = np.empty_like(mag)
    m0: dict[str, float] = {}
    for b in np.unique(bands):
        sel = bands == b
        if difference:
            m0[str(b)] = DIFF_ZP
            f = 10 ** (-0.4 * (mag[sel] - DIFF_ZP))
            x[sel] = f
            sig[sel] = f * magerr[sel] / _K
            continue
        # weights from the flux errors, not the magnitude errors: a brightening shrinks its
        # magnitude error (the flux error stays), and magnitude weights would let one bright
        # epoch of a faint star become the baseline
        f_abs = 10 ** (-0.4 * (mag[sel] - np.median(mag[sel])))
        w = 1.0 / (f_abs * magerr[sel]) ** 2
        order = np.argsort(mag[sel])
        cw = np.cumsum(w[order])
        ref = float(mag[sel][order][np.searchsorted(cw, 0.5 * cw[-1])])
        m0[str(b)] = ref
        f = 10 ** (-0.4 * (mag[sel] - ref))
        x[sel] = f - 1.0
        sig[sel] = f * magerr[sel] / _K
        if limit_mag is not None:
            # the image's noise: a flux at the limit has S/N limit_snr, whatever the star measured
            floor = 10 ** (-0.4 * (limit_mag[sel] - ref)) / limit_snr
            sig[sel] = np.where(np.isfinite(floor), np.maximum(sig[sel], floor), sig[sel])
        if scale_errors and sel.sum() >= 8:
            spread = _difference_spread(times[sel], x[sel], sig[sel]) if times is not None else math.nan
            if not math.isfinite(spread):
                z = x[sel] / sig[sel]
                spread = 1.4826 * float(np.median(np.abs(z - np.median(z))))
            if spread > 1.0:
                sig[sel] *= spread
    return x, sig, m0


@dataclass(frozen=True)
class Shape:
    """An event shape for the matched filter: ``fn(dt)`` [relative flux, 1 at the peak] of the
    time since the peak ``dt`` [day], and how to scan it over a light curve."""

    fn: Callable[[np.ndarray], np.ndarray]
    before: float  #: the shape is negligible (< ~1e-7) earlier than this before the peak [day]
    after: float  #: ... and later than this after it [day]
    extent: tuple[float, float]  #: (before, after) the peak: epochs in it sample the event [day]
    step: float  #: trial peak times this far apart resolve the peak [day]
    lead: float  #: trial peaks this far before the first epoch are searched (a missed rise) [day]
    near: tuple[float, ...]  #: offsets of the trial peaks kept near each epoch on a sparse grid [day]


def bank_shape(duration_d: float, rise_ratio: float) -> Shape:
    """The finder's template :func:`template` of decline time ``duration_d`` as a :class:`Shape`
    (negligible beyond ~1e-7 of its peak)."""
    d, q = duration_d, rise_ratio
    if q >= 1.0:
        before = after = 5.7 * d
    else:  # the Bazin rise ~ exp((dt + x_peak) / tau_r), the decline ~ exp(-dt / tau_f)
        before, after = q * d * (16.0 + math.log(1.0 / q)), 16.0 * d
    return Shape(
        fn=lambda dt: template(dt, 0.0, d, q),
        before=before,
        after=after,
        extent=(3.0 * q * d, 3.0 * d),
        step=max(min(q, 1.0) * d / 2.0, 0.01),
        lead=2.0 * q * d,
        near=(0.0, -q * d, 0.5 * d),
    )


def bank(config: TransientConfig) -> list[tuple[float, float]]:
    """The (duration [day], rise ratio) templates searched."""
    durations = [config.min_duration_d]
    while durations[-1] * config.duration_step <= config.max_duration_d:
        durations.append(durations[-1] * config.duration_step)
    return [(d, q) for d in durations for q in config.rise_ratios]


@dataclass
class _Prepared:
    """A light curve as the finder sees it: time-sorted, relative flux, errors, groups."""

    t: np.ndarray  #: sorted times [day]
    mag: np.ndarray
    magerr: np.ndarray
    band_of: np.ndarray  #: band per epoch
    names: np.ndarray  #: baseline groups ("band" or "band#season")
    bi: np.ndarray  #: baseline group per epoch
    ai: np.ndarray  #: band (amplitude group) per baseline group
    x: np.ndarray  #: relative (or difference) flux
    sig: np.ndarray  #: its error, scaled
    m0: dict[str, float]  #: baseline magnitude per group
    difference: bool

    @property
    def w(self) -> np.ndarray:
        return 1.0 / self.sig**2


def _prepare(
    t: np.ndarray,
    mag: np.ndarray,
    magerr: np.ndarray,
    bands: np.ndarray | None,
    difference: bool,
    config: TransientConfig,
    limit_mag: np.ndarray | None = None,
) -> _Prepared:
    t = np.asarray(t, float)
    mag = np.asarray(mag, float)
    magerr = np.asarray(magerr, float)
    b = np.zeros(t.size, dtype="<U1") if bands is None else np.asarray(bands).astype(str)
    ok = np.isfinite(t) & np.isfinite(mag) & np.isfinite(magerr) & (magerr > 0)
    order = np.argsort(np.where(ok, t, np.inf), kind="stable")[: int(ok.sum())]  # _scan needs time order
    t, mag, magerr, b = t[order], mag[order], magerr[order], b[order]
    lim = None
    if limit_mag is not None and config.limit_snr is not None:
        lim = np.asarray(limit_mag, float)[order]
    band_of = b
    if config.season_gap_days is not None and not difference and t.size:
        # each band and season has its own baseline (zero points and slow drifts differ)
        season = np.zeros(t.size, np.int64)
        for band in np.unique(b):
            idx = np.flatnonzero(b == band)  # already in time order
            season[idx] = np.concatenate([[0], np.cumsum(np.diff(t[idx]) > config.season_gap_days)])
        b = np.char.add(np.char.add(b.astype(str), "#"), season.astype(str))
    names, bi = np.unique(b, return_inverse=True)
    _bands, ai = np.unique([str(nm).split("#")[0] for nm in names], return_inverse=True)
    x, sig, m0 = relative_flux(
        mag,
        magerr,
        b,
        difference=difference,
        scale_errors=config.scale_errors,
        times=t,
        limit_mag=lim,
        limit_snr=config.limit_snr or 5.0,
    )
    return _Prepared(t, mag, magerr, band_of, names, bi, ai.astype(np.int64), x, sig, m0, difference)


def _trial_peaks(t: np.ndarray, shape: Shape) -> np.ndarray:
    """Trial peak times of one shape: a regular grid over the span (and ``lead`` before it),
    or on a long light curve and a short shape, the epochs and their neighbours."""
    grid = np.unique(np.concatenate([t, np.arange(t.min() - shape.lead, t.max(), shape.step)]))
    if grid.size > 4000:  # a long season at a short duration: epochs and their neighbours suffice
        grid = np.unique(np.concatenate([t + off for off in shape.near]))
    return grid


def _scan(
    lc: _Prepared, shape: Shape, centres: np.ndarray, x: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """snr (F,), amplitudes (F, groups) and the signed S/N (F,) of one shape at the trial peak times.

    The model and the statistic are the module docstring's (``x`` replaces the light
    curve's relative flux, e.g. by a noiseless signal). Amplitudes are NaN for groups
    without an epoch in the event's extent, the signed S/N is NaN where no band has one.
    Only epochs where the shape is above ~1e-7 enter the sums (a window per trial time),
    so the cost grows with the epochs per window, not with all epochs.
    """
    t, bi, ai = lc.t, lc.bi, lc.ai
    x = lc.x if x is None else x
    w = lc.w
    n_c = centres.size
    nb = ai.size
    na = int(ai.max()) + 1 if nb else 0
    lo = np.searchsorted(t, centres - shape.before, "left")
    hi = np.searchsorted(t, centres + shape.after, "right")
    sxw = np.zeros((n_c, nb))
    sw = np.zeros((n_c, nb))
    ssw = np.zeros((n_c, nb))
    inside = np.zeros((n_c, nb))
    budget = 200_000  # (trial time, epoch) pairs per chunk: small enough to stay in cache
    start = 0
    while start < n_c:
        stop = min(n_c, start + max(1, budget // max(int(hi[start] - lo[start]), 1)))
        while True:
            span = int(np.max(hi[start:stop] - lo[start:stop], initial=0))
            if (stop - start) * max(span, 1) <= budget or stop - start == 1:
                break
            stop = start + max(1, (stop - start) // 2)
        if span > 0:
            idx = lo[start:stop, None] + np.arange(span)[None, :]
            valid = idx < hi[start:stop, None]
            idx = np.minimum(idx, t.size - 1)
            dt = t[idx] - centres[start:stop, None]
            s = shape.fn(dt) * valid
            sw_c = s * w[idx]
            ext = (valid & (dt >= -shape.extent[0]) & (dt <= shape.extent[1])).astype(float)
            sxw_c, ssw_c = sw_c * x[idx], sw_c * s
            # row sums per group, over the groups this chunk's epochs belong to (mostly one)
            present = np.unique(bi[lo[start] : max(int(hi[start:stop].max()), lo[start] + 1)])
            for g in present:
                mg = (bi[idx] == g) if present.size > 1 else np.ones_like(valid)
                sw[start:stop, g] = np.sum(sw_c, axis=1, where=mg)
                sxw[start:stop, g] = np.sum(sxw_c, axis=1, where=mg)
                ssw[start:stop, g] = np.sum(ssw_c, axis=1, where=mg)
                inside[start:stop, g] = np.sum(ext, axis=1, where=mg)
        start = stop
    if lc.difference:
        num, den = sxw, ssw
    else:  # each group's baseline fitted with the amplitude: the shape minus its weighted mean
        w_grp = np.bincount(bi, weights=w, minlength=nb)
        xw_grp = np.bincount(bi, weights=x * w, minlength=nb)
        num = sxw - sw * (xw_grp / w_grp)[None, :]
        den = ssw - sw * sw / w_grp[None, :]
        den = np.where(den > 1e-9 * ssw, den, 0.0)  # flat over the group: no information (and no rounding)
    num_b = np.zeros((n_c, na))  # per band: sums over its groups (one amplitude)
    den_b = np.zeros((n_c, na))
    in_b = np.zeros((n_c, na))
    for k in range(nb):
        num_b[:, ai[k]] += num[:, k]
        den_b[:, ai[k]] += den[:, k]
        in_b[:, ai[k]] += inside[:, k]
    good = (den_b > 0) & (in_b > 0)
    safe = np.where(good, den_b, 1.0)
    amp_b = np.where(good, num_b / safe, 0.0)
    snr2 = np.where(good & (num_b > 0), num_b * num_b / safe, 0.0).sum(axis=1)
    num_all = np.where(good, num_b, 0.0).sum(axis=1)
    den_all = np.where(good, den_b, 0.0).sum(axis=1)
    signed = np.where(den_all > 0, num_all / np.sqrt(np.where(den_all > 0, den_all, 1.0)), np.nan)
    amp = np.where(inside > 0, amp_b[:, ai], np.nan)
    return np.sqrt(snr2), amp, signed


def _width(v: np.ndarray) -> float:
    """Robust width (MAD) of a shape's signed output, at least 1."""
    return max(1.0, 1.4826 * float(np.median(np.abs(v - np.median(v)))))


def _noise_factor(signed: np.ndarray, lc: _Prepared, config: TransientConfig) -> float:
    """The noise factor of a shape: the robust width of its signed output (module docstring)."""
    fin = np.isfinite(signed)  # the trial times the light curve samples
    if not config.normalise or lc.difference or fin.sum() < 20:
        return 1.0
    # correlated noise (nightly zero points, seasonal drifts) widens the filter's output
    # beyond its white-noise unit width, dimmings as much as brightenings: divide by it
    return _width(signed[fin])


def _noise_factors(
    signed: np.ndarray,
    snr: np.ndarray,
    grid: np.ndarray,
    shape: Shape,
    lc: _Prepared,
    config: TransientConfig,
    at: float | None = None,
) -> np.ndarray:
    """The noise factor per trial time: :func:`_noise_factor`, except near the strongest response
    (or near the peak time ``at`` [day] of a known signal).

    There (trial times whose event extent overlaps the best one's) the width is measured
    off it, on the other trial times, when those span at least ``noise_blocks`` event
    extents: an event's own output would otherwise count as noise (a long event fills
    much of a season's trial times and hides itself). Elsewhere the width over all trial
    times stays (with the event in it: conservative, no second event from its wings).
    """
    factor = np.full(grid.size, _noise_factor(signed, lc, config))
    fin = np.isfinite(signed)
    if not (config.normalise and not lc.difference and fin.sum() >= 20) or not config.noise_blocks:
        return factor
    if at is None and not np.any(snr > 0):
        return factor
    width = shape.extent[0] + shape.extent[1]
    centre = grid[int(np.argmax(snr))] if at is None else at
    on = np.abs(grid - centre) <= width
    off = fin & ~on
    if off.sum() >= 20 and _n_blocks(grid[off], width) >= config.noise_blocks:
        factor[on] = _width(signed[off])
    return factor


def _n_blocks(times: np.ndarray, width: float) -> int:
    """How many consecutive intervals of ``width`` [day] hold at least one of ``times``: the
    independent samples of a shape's output (gaps between seasons do not count)."""
    if times.size == 0:
        return 0
    return int(np.unique(np.floor((times - times.min()) / width)).size)


def _measurable(lc: _Prepared, shape: Shape, config: TransientConfig) -> bool:
    """Whether the noise factor of a shape can be measured on this light curve (``noise_blocks``)."""
    if not config.normalise or lc.difference or not config.noise_blocks:
        return True
    return _n_blocks(lc.t, shape.extent[0] + shape.extent[1]) >= config.noise_blocks


@dataclass
class _TemplateNoise:
    shape: Shape
    grid: np.ndarray  #: trial peak times [day]
    snr: np.ndarray  #: white-noise S/N of the light curve per trial time
    signed: np.ndarray  #: signed S/N per trial time (NaN where unsampled)


class NoiseModel:
    """The transient finder's view of one light curve's noise, for signals added to it.

    Built once per light curve (a pass over the template bank, like a search); then
    :meth:`finder_snr` gives the S/N the finder would report for a known signal added to the
    light curve, without the light curve's own noise: the maximum over the searched templates
    and trial times of the matched-filter S/N of the signal (the finder's errors, one
    amplitude per band, a baseline per band and season) divided by each template's noise
    factor measured on this light curve as the finder measures it with the signal present
    (off the signal's own output; module docstring). That is the statistic the finder
    thresholds on, so efficiency against it crosses 50 % near the threshold when nothing
    (quality checks, matching) loses events; the search's maximum over trial times and
    templates of signal plus noise (look-elsewhere) moves the crossing a little lower.
    :meth:`optimal_snr` gives the S/N of a template of exactly the signal's shape instead:
    their ratio is what the bank's coarseness costs.
    """

    def __init__(
        self,
        t: np.ndarray,
        mag: np.ndarray,
        magerr: np.ndarray,
        bands: np.ndarray | None = None,
        *,
        difference: bool = False,
        config: TransientConfig | None = None,
        limit_mag: np.ndarray | None = None,
    ) -> None:
        self.config = config or TransientConfig()
        self.lc = _prepare(t, mag, magerr, bands, difference, self.config, limit_mag)
        self.templates: list[_TemplateNoise] = []
        if self.lc.t.size < self.config.min_epochs:
            return
        for d, q in bank(self.config):
            shape = bank_shape(d, q)
            if _measurable(self.lc, shape, self.config):
                grid = _trial_peaks(self.lc.t, shape)
                snr, _amp, signed = _scan(self.lc, shape, grid)
                self.templates.append(_TemplateNoise(shape, grid, snr, signed))

    def _relative(self, signal: Callable[[np.ndarray], np.ndarray], base_mag: float) -> np.ndarray:
        """The signal in the finder's units: flux over each baseline group's (``10^(-0.4 m0)``)."""
        lc = self.lc
        m0 = np.array([lc.m0[str(nm)] for nm in lc.names])
        return np.asarray(signal(lc.t), float) * 10 ** (-0.4 * (base_mag - m0[lc.bi]))

    def finder_snr(
        self, signal: Callable[[np.ndarray], np.ndarray], peak: float, *, base_mag: float
    ) -> float:
        """S/N the finder would report for ``signal(t)`` (added flux at times ``t`` [day], in units
        of the flux of magnitude ``base_mag``, the same in every band) peaking at ``peak`` [day]."""
        lc = self.lc
        if not self.templates:
            return 0.0
        y = self._relative(signal, base_mag)
        support = np.abs(y) > 1e-6 * float(np.max(np.abs(y), initial=0.0))
        if not support.any():
            return 0.0
        first, last = lc.t[support].min(), lc.t[support].max()
        best = 0.0
        for tn in self.templates:
            near = (tn.grid >= first - tn.shape.after) & (tn.grid <= last + tn.shape.before)
            if not near.any():
                continue
            snr, _amp, _signed = _scan(lc, tn.shape, tn.grid[near], x=y)
            factor = _noise_factors(tn.signed, tn.snr, tn.grid, tn.shape, lc, self.config, at=peak)[near]
            best = max(best, float(np.max(snr / factor)))
        return best

    def optimal_snr(
        self, signal: Callable[[np.ndarray], np.ndarray], shape: Shape, peak: float, *, base_mag: float
    ) -> float:
        """S/N of ``signal`` (as in :meth:`finder_snr`) for a template of exactly its ``shape``."""
        lc = self.lc
        if lc.t.size < self.config.min_epochs:
            return 0.0
        y = self._relative(signal, base_mag)
        w = lc.w
        if lc.difference:
            den = float(np.sum(w * y * y))
        else:
            w_grp = np.bincount(lc.bi, weights=w)
            yc = y - (np.bincount(lc.bi, weights=w * y) / w_grp)[lc.bi]
            den = float(np.sum(w * yc * yc))
        grid = _trial_peaks(lc.t, shape)
        snr, _amp, signed = _scan(lc, shape, grid)
        factor = _noise_factors(signed, snr, grid, shape, lc, self.config, at=peak)
        return math.sqrt(max(den, 0.0)) / float(factor[int(np.argmin(np.abs(grid - peak)))])


def find_transients(
    t: np.ndarray,
    mag: np.ndarray,
    magerr: np.ndarray,
    bands: np.ndarray | None = None,
    *,
    difference: bool = False,
    config: TransientConfig | None = None,
    limit_mag: np.ndarray | None = None,
) -> list[Event]:
    """Events in a light curve (all bands of one object); see the module docstring.

    ``t`` in days (MJD), ``mag``/``magerr`` in magnitudes; bad epochs must already be removed.
    ``limit_mag``: each epoch's limiting magnitude (S/N ``config.limit_snr``; an error floor
    for ordinary photometry, module docstring), when the survey gives it. Returns the
    events, best first.
    """
    config = config or TransientConfig()
    lc = _prepare(t, mag, magerr, bands, difference, config, limit_mag)
    if lc.t.size < config.min_epochs:
        return []
    t, mag, magerr, band_of, names = lc.t, lc.mag, lc.magerr, lc.band_of, lc.names
    single = lc.x / lc.sig
    best: list[tuple[float, float, float, float, float]] = []  # snr, tp, d, q, noise factor
    for d, q in bank(config):
        shape = bank_shape(d, q)
        if not _measurable(lc, shape, config):
            continue  # longer than the light curve can tell from its own slow drifts
        grid = _trial_peaks(t, shape)
        snr, _amp, signed = _scan(lc, shape, grid)
        scale = _noise_factors(signed, snr, grid, shape, lc, config)
        snr = snr / scale
        for i in np.flatnonzero(snr >= config.snr_threshold):
            best.append((float(snr[i]), float(grid[i]), d, q, float(scale[i])))
    if not best:
        return []
    best.sort(key=lambda e: -e[0])
    events: list[Event] = []
    for snr_v, tp, d, q, scale in best:
        if len(events) >= config.max_events:
            break
        if any(not _separated(t, single, tp, d, q, ev, config.baseline_snr) for ev in events):
            continue
        # refine the peak time on a fine grid around tp
        fine = tp + np.linspace(-min(q, 1.0) * d / 2, min(q, 1.0) * d / 2, 41)
        s2, a2, _ = _scan(lc, bank_shape(d, q), fine)
        j = int(np.argmax(s2))
        tp, snr_v, amp = float(fine[j]), float(s2[j]) / scale, a2[j]
        span = (t >= tp - 3 * q * d) & (t <= tp + 3 * d)
        if span.sum() < config.min_epochs_in_event:
            continue
        peak = {}
        for k in range(names.size):
            a = float(amp[k])
            if not math.isfinite(a):  # this band and season has no epoch within the event
                continue
            if difference:
                peak[str(names[k])] = DIFF_ZP - 2.5 * math.log10(a) if a > 0 else math.inf
            else:
                peak[str(names[k])] = lc.m0[str(names[k])] - 2.5 * math.log10(1.0 + a) if a > -1 else math.inf
        t_obs, _m_obs, _, per_band = _observed_peak(t[span], mag[span], magerr[span], band_of[span], config)
        bands_peak: dict[str, float] = {}
        for key, value in peak.items():  # band#season -> band: the brightest season's value
            bk = key.split("#")[0]
            bands_peak[bk] = min(value, bands_peak.get(bk, math.inf))
        peak = bands_peak
        if t_obs is not None:  # the maximum was sampled: trust the data over the template
            tp = t_obs
            peak.update(per_band)
        if not peak:
            continue
        band = min(peak, key=peak.get)
        if config.peak_model == "snia":
            tp = _snia_peak(lc, tp, band)
        events.append(
            Event(
                mjd_peak=tp,
                duration_d=d,
                rise_ratio=q,
                snr=snr_v,
                peak_mag=peak[band],
                band=band,
                peak_mags=peak,
                amplitude={
                    str(names[k]): float(amp[k])
                    for k in range(names.size)
                    if np.isfinite(amp[k]) and amp[k] != 0
                },
                n_epochs=int(span.sum()),
                max_single_snr=float(single[span].max()) if span.any() else 0.0,
            )
        )
    return events


def _snia_peak(lc: _Prepared, tp: float, band: str) -> float:
    """The mean of the data's time of maximum ``tp`` [day] and the Ia template's in ``band``.

    Two estimates with errors of the same size (each within 5 d of the published maximum for
    ~93 % of the ZTF SN Ia here, failing on different light curves: the data's where the
    maximum fell in a gap, the template's where an event is not a normal Ia), so equal weights.
    """
    from darkroom.analysis.snia import fit_snia_peak

    peaks = fit_snia_peak(lc.t, lc.x, lc.sig, lc.band_of, lc.names[lc.bi], tp)
    return 0.5 * (tp + peaks[band]) if band in peaks else tp


def _separated(
    t: np.ndarray, single: np.ndarray, tp: float, d: float, q: float, ev: Event, baseline_snr: float
) -> bool:
    """A candidate is a new event only if its extent avoids ``ev``'s and the light curve
    returns to the baseline between the two."""
    a0, a1 = tp - 3 * q * d, tp + 3 * d
    b0, b1 = ev.mjd_peak - 3 * ev.rise_ratio * ev.duration_d, ev.mjd_peak + 3 * ev.duration_d
    if a0 <= b1 and b0 <= a1:
        return False
    lo, hi = (b1, a0) if a0 > b1 else (a1, b0)
    between = (t > lo) & (t < hi)
    return bool(np.any(single[between] < baseline_snr))


def _observed_peak(
    t: np.ndarray, mag: np.ndarray, magerr: np.ndarray, b: np.ndarray, config: TransientConfig
) -> tuple[float | None, float, str, dict[str, float]]:
    """Peak from the data when the maximum was sampled (epochs before and after it).

    Per band, a weighted parabola in magnitude through the epochs within ``peak_window_d``
    of the brightest one (its vertex when it is a maximum inside them, else the brightest
    epoch). The brightest band wins. Returns (None, ...) when no band brackets its maximum:
    the template's extrapolated peak is then used.
    """
    per: dict[str, tuple[float, float, bool]] = {}
    for band in np.unique(b):
        sel = b == band
        tb, mb, eb = t[sel], mag[sel], magerr[sel]
        j = int(np.argmin(mb))
        bracketed = bool(np.any(tb < tb[j]) and np.any(tb > tb[j]))
        tpk, mpk = float(tb[j]), float(mb[j])
        near = np.abs(tb - tb[j]) < config.peak_window_d
        if near.sum() >= 4:
            x = tb[near] - tb[j]
            c = np.polyfit(x, mb[near], 2, w=1.0 / eb[near])
            if c[0] > 0:
                v = -c[1] / (2.0 * c[0])
                if x.min() <= v <= x.max():
                    tpk, mpk = float(tb[j] + v), float(np.polyval(c, v))
        per[str(band)] = (tpk, mpk, bracketed)
    best = min(per, key=lambda k: per[k][1])
    mags = {k: v[1] for k, v in per.items()}
    if config.extrapolate_unsampled_peak and not any(v[2] for v in per.values()):
        return None, per[best][1], best, mags
    return per[best][0], per[best][1], best, mags
