"""The illumination pattern a drifting, unflattened field traces, measured by its own stars.

Given 150 stars drifting 120 px over a night through 4 % of radial vignetting (no flat), the
fit recovers the pattern and the corrected fluxes of constant stars are flat to their photon
noise; a flat-fielded or static field is left alone, and a field that hardly moves gets no
wild correction."""

from __future__ import annotations

import numpy as np
import pytest

from darkroom.timeseries.illumination import fit_illumination
from darkroom.timeseries.settings import IlluminationConfig

N_EP, N_ST = 160, 150


def _field(*, vignetting: float, drift: float, seed: int = 1, variable: bool = False):
    """(flux, err, x, y, vignetting factor) of a drifting field; star 0 is the target."""
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(40, 610, N_ST), rng.uniform(40, 460, N_ST)
    t = np.linspace(0.0, 4.0, N_EP)  # hours
    x = x0[None, :] + drift * (27.0 * t[:, None] - 54.0) / 120.0
    y = y0[None, :] + drift * (-13.5 * t[:, None] + 27.0) / 120.0
    vig = 1.0 - vignetting * (((x - 325) / 325) ** 2 + ((y - 250) / 325) ** 2)
    base = 10 ** (-0.4 * (rng.uniform(10, 15, N_ST) - 25))
    true = base[None, :] * (0.9 + 0.1 * np.cos(t))[:, None]  # transparency
    if variable:
        true[:, 5] *= 1 + 0.1 * np.sin(2 * np.pi * t / 1.3)
    err = np.sqrt(true * vig + 5e4)
    flux = true * vig + rng.normal(0, 1, true.shape) * err
    return flux, err, x, y, vig


def _trend_rms(flux: np.ndarray) -> float:
    """Median over stars (not the target) of the rms of ln(flux / ensemble) after removing each
    star's mean: what is left of the pattern plus noise."""
    ratio = np.log(flux[:, 1:]) - np.log(np.median(flux[:, 1:], axis=1))[:, None]
    ratio -= ratio.mean(axis=0)
    return float(np.median(np.std(ratio, axis=0)))


def test_drifting_unflattened_field_pattern_recovered():
    flux, err, x, y, vig = _field(vignetting=0.04, drift=120.0)
    noise_only, *_ = _field(vignetting=0.0, drift=120.0)
    fit = fit_illumination(flux, err, x, y, exclude=(0,))
    assert fit.applied and "removed" in fit.reason
    true_amp = vig.max() / vig.min() - 1
    assert fit.amplitude == pytest.approx(true_amp, rel=0.1)
    # the factor undoes the vignetting up to one constant (per star and epoch constants cancel)
    resid = np.log(fit.factor * vig)
    resid -= resid.mean(axis=0)
    resid -= resid.mean(axis=1)[:, None]
    assert np.max(np.abs(resid)) < 0.002
    assert _trend_rms(flux) > 1.3 * _trend_rms(noise_only)
    assert _trend_rms(flux * fit.factor) == pytest.approx(_trend_rms(noise_only), rel=0.05)


def test_a_variable_star_does_not_bend_the_pattern():
    flux, err, x, y, vig = _field(vignetting=0.04, drift=120.0, variable=True)
    fit = fit_illumination(flux, err, x, y, exclude=(0,))
    resid = np.log(fit.factor * vig)
    resid -= resid.mean(axis=0)
    resid -= resid.mean(axis=1)[:, None]
    assert fit.applied and np.max(np.abs(resid)) < 0.003


def test_flat_fielded_or_static_field_is_left_alone():
    flat, err, x, y, _ = _field(vignetting=0.0, drift=120.0)
    fit = fit_illumination(flat, err, x, y, exclude=(0,))
    assert not fit.applied and "not significant" in fit.reason and np.all(fit.factor == 1)
    static, err, x, y, _ = _field(vignetting=0.04, drift=2.0)
    fit = fit_illumination(static, err, x, y, exclude=(0,))
    assert not fit.applied and "moved" in fit.reason
    off = fit_illumination(flat, err, x, y, config=IlluminationConfig(mode="off"))
    assert not off.applied


def test_little_motion_gives_no_wild_correction():
    # 12 px of motion: the polynomial's curvature is barely constrained; forced on, the prior
    # keeps the correction near the truth's size instead of letting noise blow it up
    flux, err, x, y, _ = _field(vignetting=0.04, drift=12.0, seed=3)
    fit = fit_illumination(flux, err, x, y, exclude=(0,), config=IlluminationConfig(mode="on"))
    assert fit.factor.min() > 0.85 and fit.factor.max() < 1.15
