"""Time of maximum light of a type Ia supernova from the Hsiao et al. (2007) template.

The spectral template (phase -20 .. +85 d from B maximum, rest frame; the copy sncosmo
ships as ``hsiao-subsampled``) is integrated through top-hat approximations of the survey
passbands (photon counting: ``sum f_lambda lambda T``) at a typical survey redshift, giving
one light-curve shape per band in observer-frame days. A light curve is fitted by weighted
least squares in flux with one time of B maximum ``t0``, one stretch ``s`` of the time axis
(a 10 % log-normal prior about 1: the Ia width-luminosity range), and one amplitude per
baseline group; epochs later than the template's last phase are left out, epochs before its
first phase are at zero flux (the supernova was not there yet).

Why a template at all: alert light curves (ZTF, every ~3 d, with gaps of 1-2 weeks) often
leave the maximum in a gap, where the brightest epoch or a parabola through the epochs near
it lands on the gap's edge; the template's rise and decline on both sides of the gap pin the
maximum between them. The redder bands peak later (r about 1.5 d after g), which the
per-band shapes carry.

Passbands are approximated by their half-power ranges [Angstrom]: the light-curve shape
changes slowly with wavelength, so the exact throughput matters little here.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["PASSBANDS", "SNIA_REDSHIFT", "band_shapes", "fit_snia_peak"]

#: half-power ranges [Angstrom] of the bands the template knows; names as surveys write them
PASSBANDS: dict[str, tuple[float, float]] = {
    "u": (3050.0, 4000.0),
    "g": (4100.0, 5500.0),
    "r": (5600.0, 7300.0),
    "i": (7000.0, 8500.0),
    "z": (8300.0, 9500.0),
    "B": (3900.0, 4900.0),
    "V": (5000.0, 5900.0),
    "R": (5600.0, 7300.0),  # ZTF's R-named r band in alert streams; close to Johnson-Cousins R
    "I": (7000.0, 8500.0),
}
#: the redshift the shapes are computed at (a bright-transient survey's typical Ia)
SNIA_REDSHIFT = 0.05
_STRETCH_PRIOR = 0.10  # rms of ln(stretch)
_T0_RANGE = 30.0  # the fitted B maximum stays this close to the first guess [day]


def _band_key(name: str) -> str | None:
    """The :data:`PASSBANDS` key of a survey band name ('ztfg', 'ZTF_r', 'sdss_i', 'g', 'R')."""
    if name in PASSBANDS:
        return name
    tail = name.strip().split("_")[-1]
    tail = tail[-1:] if tail.lower().startswith(("ztf", "sdss", "ps1", "des")) else tail
    if tail in PASSBANDS:
        return tail
    low = tail.lower()
    return low if low in PASSBANDS else None


@lru_cache(maxsize=1)
def _template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(phase [d], wavelength [Angstrom], f_lambda (phase, wavelength)) of the Hsiao template."""
    import sncosmo

    source = sncosmo.get_source("hsiao-subsampled")
    phase = np.arange(source.minphase(), source.maxphase() + 0.01, 0.25)
    wave = np.arange(max(source.minwave(), 2500.0), min(source.maxwave(), 11000.0), 5.0)
    return phase, wave, np.asarray(source.flux(phase, wave), float)


@lru_cache(maxsize=32)
def band_shapes(band: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(observer-frame days since B maximum, flux relative to its maximum) of the template in
    ``band`` at :data:`SNIA_REDSHIFT`; None for a band the template does not know."""
    key = _band_key(band)
    if key is None:
        return None
    phase, wave, flux = _template()
    lo, hi = PASSBANDS[key]
    rest = (wave * (1 + SNIA_REDSHIFT) >= lo) & (wave * (1 + SNIA_REDSHIFT) <= hi)
    counts = (flux[:, rest] * wave[rest]).sum(axis=1)
    return phase * (1 + SNIA_REDSHIFT), counts / counts.max()


def fit_snia_peak(
    t: np.ndarray, x: np.ndarray, sig: np.ndarray, band: np.ndarray, group: np.ndarray, t_guess: float
) -> dict[str, float]:
    """Times of maximum light per band [same days as ``t``] of the Ia template fitted to a light
    curve.

    ``x``/``sig``: flux above the baseline and its error (any unit, per ``group``: each group
    has its own amplitude, e.g. a band and season), ``band``: band name per epoch, ``t_guess``:
    a first guess of the maximum [day] (three starts about it are tried; the fitted maximum
    stays within 30 d of it). Bands the template
    does not know are left out; returns {} when no band is left or the fit fails.
    """
    from scipy.optimize import least_squares

    t, x, sig = (np.asarray(a, float) for a in (t, x, sig))
    band = np.asarray(band).astype(str)
    group = np.asarray(group)
    shapes = {b: band_shapes(b) for b in np.unique(band)}
    use = np.array([shapes[b] is not None for b in band]) & np.isfinite(x) & (sig > 0)
    use &= (t > t_guess - 50.0) & (t < t_guess + 100.0)
    if use.sum() < 3:
        return {}
    t, x, sig, band, group = t[use], x[use], sig[use], band[use], group[use]
    groups, gi = np.unique(group, return_inverse=True)
    bands = np.unique(band)

    def model(p: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        for b in bands:
            sel = band == b
            days, rel = shapes[b]  # type: ignore[misc]
            out[sel] = np.interp((t[sel] - p[0]) / math.exp(p[1]), days, rel, left=0.0, right=np.nan)
        return out * p[2:][gi]

    def residuals(p: np.ndarray) -> np.ndarray:
        r = (x - model(p)) / sig
        return np.append(np.where(np.isfinite(r), r, 0.0), p[1] / _STRETCH_PRIOR)

    amp0 = np.array([max(float(np.max(x[gi == k])), 1e-12) for k in range(groups.size)])
    # the maximum is near the guess: a free t0 could slide off behind the epochs, where the
    # template predicts zero flux everywhere
    lower = np.concatenate([[t_guess - _T0_RANGE, -5 * _STRETCH_PRIOR], np.full(groups.size, -np.inf)])
    upper = np.concatenate([[t_guess + _T0_RANGE, 5 * _STRETCH_PRIOR], np.full(groups.size, np.inf)])
    best = None
    for start in (-10.0, -3.0, 3.0):
        try:
            p0 = np.concatenate([[t_guess + start, 0.0], amp0])
            fit = least_squares(residuals, p0, bounds=(lower, upper))
        except (ValueError, np.linalg.LinAlgError):
            continue
        if fit.success and (best is None or fit.cost < best.cost):
            best = fit
    if best is None:
        return {}
    t0, stretch = float(best.x[0]), math.exp(float(best.x[1]))
    peaks: dict[str, float] = {}
    for b in bands:
        days, rel = shapes[b]  # type: ignore[misc]
        peaks[str(b)] = t0 + stretch * float(days[int(np.argmax(rel))])
    return peaks
