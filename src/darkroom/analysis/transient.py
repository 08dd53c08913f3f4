"""Transients and flares: single-epoch S/N and a matched filter over a bank of durations.

Works on irregular, multi-season, multi-band sampling. Fluxes are taken relative to a
per-band baseline:

* ordinary photometry: ``x = 10^(-0.4 (m - m0)) - 1`` with ``m0`` the weighted median
  magnitude of the band (an event is a fractional brightening);
* difference photometry (alert light curves; baseline flux zero): ``x = 10^(-0.4 (m - 25))``.

Errors ``sigma = (1 + x) dm / 1.0857`` (ordinary) or ``x dm / 1.0857`` (difference). For ordinary
photometry each band's errors are scaled up by the robust (MAD) spread of ``x / sigma`` when
that exceeds 1, so underestimated survey errors do not make events.

Templates ``s(t; t_p, D, q)``: a Gaussian rise of width ``q D`` before the peak ``t_p`` and an
exponential decline of e-folding ``D`` after it (``q = 1``: nearly symmetric, microlensing-like;
``q = 0.3``: supernova-like; ``q = 0.05``: flare-like), for durations ``D`` on a log grid. For
each template and peak time, each band gets its own amplitude ``A_b = S_b / N_b`` with
``S_b = sum s x / sigma^2`` and ``N_b = sum s^2 / sigma^2`` (for ordinary photometry ``s``
minus its weighted mean: the baseline is fitted with the amplitude); the detection statistic is
``snr = sqrt(sum_b max(S_b, 0)^2 / N_b)`` (the matched-filter S/N; the single-epoch S/N is the
limit of a template narrower than the sampling). The best template sets the event's peak
time (refined on a fine grid; it may lie before the first epoch, where the template
extrapolates a rise that was missed), its duration, and its peak magnitude (the brightest
band's ``A_b``).

For ordinary photometry each template's S/N is divided by the robust width of its signed
output over all trial times when that exceeds 1: correlated noise (nightly zero points,
seasonal drifts) makes dimmings as often as brightenings, and this keeps the 5-sigma
threshold honest on real survey light curves.

One light curve can hold several events only if it returns to the baseline between them
(an epoch with single-epoch S/N < ``baseline_snr``), so an alert light curve, which has no
baseline epochs, holds at most one event per season.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Event", "TransientConfig", "find_transients", "relative_flux", "template"]

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
    scale_errors: bool = Field(True, description="scale errors up by the robust spread (ordinary photometry)")
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


def relative_flux(
    mag: np.ndarray, magerr: np.ndarray, bands: np.ndarray, *, difference: bool, scale_errors: bool = True
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(x, sigma, m0 per band): flux relative to the baseline and its error (module docstring)."""
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
        w = 1.0 / magerr[sel] ** 2
        order = np.argsort(mag[sel])
        cw = np.cumsum(w[order])
        ref = float(mag[sel][order][np.searchsorted(cw, 0.5 * cw[-1])])
        m0[str(b)] = ref
        f = 10 ** (-0.4 * (mag[sel] - ref))
        x[sel] = f - 1.0
        sig[sel] = f * magerr[sel] / _K
        if scale_errors and sel.sum() >= 8:
            z = x[sel] / sig[sel]
            spread = 1.4826 * float(np.median(np.abs(z - np.median(z))))
            if spread > 1.0:
                sig[sel] *= spread
    return x, sig, m0


def _scan(
    t: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    bi: np.ndarray,
    nb: int,
    centres: np.ndarray,
    d: float,
    q: float,
    free_baseline: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """snr (F,), amplitudes (F, nb) and the signed S/N (F,) of one template at the trial peak times.

    With ``free_baseline`` each band's baseline is fitted with the amplitude (the template
    minus its weighted mean), so a long event does not hide in a baseline it shifted.
    """
    s = template(t[None, :], centres[:, None], d, q)  # (F, n)
    snr2 = np.zeros(centres.size)
    amp = np.zeros((centres.size, nb))
    num_all = np.zeros(centres.size)
    den_all = np.zeros(centres.size)
    for b in range(nb):
        sel = bi == b
        sb = s[:, sel]
        if free_baseline:
            sb = sb - (sb @ w[sel])[:, None] / w[sel].sum()
        num = sb @ (x[sel] * w[sel])
        den = (sb * sb) @ w[sel]
        good = den > 0
        a = np.where(good, num / np.where(good, den, 1.0), 0.0)
        amp[:, b] = a
        snr2 += np.where(good & (num > 0), num * num / np.where(good, den, 1.0), 0.0)
        num_all += num
        den_all += den
    signed = np.where(den_all > 0, num_all / np.sqrt(np.where(den_all > 0, den_all, 1.0)), 0.0)
    return np.sqrt(snr2), amp, signed


def find_transients(
    t: np.ndarray,
    mag: np.ndarray,
    magerr: np.ndarray,
    bands: np.ndarray | None = None,
    *,
    difference: bool = False,
    config: TransientConfig | None = None,
) -> list[Event]:
    """Events in a light curve (all bands of one object); see the module docstring.

    ``t`` in days (MJD), ``mag``/``magerr`` in magnitudes; bad epochs must already be removed.
    Returns the events, best first.
    """
    config = config or TransientConfig()
    t = np.asarray(t, float)
    mag = np.asarray(mag, float)
    magerr = np.asarray(magerr, float)
    b = np.zeros(t.size, dtype="<U1") if bands is None else np.asarray(bands).astype(str)
    ok = np.isfinite(t) & np.isfinite(mag) & np.isfinite(magerr) & (magerr > 0)
    t, mag, magerr, b = t[ok], mag[ok], magerr[ok], b[ok]
    if t.size < config.min_epochs:
        return []
    band_of = b
    if config.season_gap_days is not None and not difference:
        # each band and season has its own baseline (zero points and slow drifts differ)
        season = np.zeros(t.size, np.int64)
        for band in np.unique(b):
            idx = np.flatnonzero(b == band)
            idx = idx[np.argsort(t[idx])]
            season[idx] = np.concatenate([[0], np.cumsum(np.diff(t[idx]) > config.season_gap_days)])
        b = np.char.add(np.char.add(b.astype(str), "#"), season.astype(str))
    names, bi = np.unique(b, return_inverse=True)
    nb = names.size
    x, sig, m0 = relative_flux(mag, magerr, b, difference=difference, scale_errors=config.scale_errors)
    w = 1.0 / sig**2
    single = x / sig
    durations = [config.min_duration_d]
    while durations[-1] * config.duration_step <= config.max_duration_d:
        durations.append(durations[-1] * config.duration_step)
    best: list[tuple[float, float, float, float, float]] = []  # snr, tp, d, q, noise scale
    for d in durations:
        for q in config.rise_ratios:
            step = max(min(q, 1.0) * d / 2.0, 0.01)
            lo, hi = t.min() - 2.0 * q * d, t.max()
            grid = np.unique(np.concatenate([t, np.arange(lo, hi, step)]))
            if grid.size > 4000:  # a long season at a short duration: epochs and their neighbours suffice
                grid = np.unique(np.concatenate([t, t - q * d, t + 0.5 * d]))
            snr, amp, signed = _scan(t, x, w, bi, nb, grid, d, q, not difference)
            scale = 1.0
            if config.normalise and not difference and signed.size >= 20:
                # correlated noise (nightly zero points, seasonal drifts) widens the filter's output
                # beyond its white-noise unit width, dimmings as much as brightenings: divide by it
                scale = max(1.0, 1.4826 * float(np.median(np.abs(signed - np.median(signed)))))
            snr = snr / scale
            for i in np.flatnonzero(snr >= config.snr_threshold):
                best.append((float(snr[i]), float(grid[i]), d, q, scale))
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
        s2, a2, _ = _scan(t, x, w, bi, nb, fine, d, q, not difference)
        j = int(np.argmax(s2))
        tp, snr_v, amp = float(fine[j]), float(s2[j]) / scale, a2[j]
        span = (t >= tp - 3 * q * d) & (t <= tp + 3 * d)
        if span.sum() < config.min_epochs_in_event:
            continue
        peak = {}
        for k in range(nb):
            a = float(amp[k])
            if difference:
                peak[str(names[k])] = DIFF_ZP - 2.5 * math.log10(a) if a > 0 else math.inf
            else:
                peak[str(names[k])] = m0[str(names[k])] - 2.5 * math.log10(1.0 + a) if a > -1 else math.inf
        t_obs, _m_obs, _, per_band = _observed_peak(t[span], mag[span], magerr[span], band_of[span], config)
        bands_peak: dict[str, float] = {}
        for key, value in peak.items():  # band#season -> band: the brightest season's value
            bk = key.split("#")[0]
            bands_peak[bk] = min(value, bands_peak.get(bk, math.inf))
        peak = bands_peak
        if t_obs is not None:  # the maximum was sampled: trust the data over the template
            tp = t_obs
            peak.update(per_band)
        band = min(peak, key=peak.get)
        events.append(
            Event(
                mjd_peak=tp,
                duration_d=d,
                rise_ratio=q,
                snr=snr_v,
                peak_mag=peak[band],
                band=band,
                peak_mags=peak,
                amplitude={str(names[k]): float(amp[k]) for k in range(nb) if amp[k] != 0},
                n_epochs=int(span.sum()),
                max_single_snr=float(single[span].max()) if span.any() else 0.0,
            )
        )
    return events


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
