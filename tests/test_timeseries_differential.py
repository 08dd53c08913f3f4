"""Differential photometry on synthetic light curves with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from darkroom.errors import BadInputError, SolveError
from darkroom.phot import PhotFlag
from darkroom.timeseries import (
    ComparisonConfig,
    clipped_std,
    differential_photometry,
    point_to_point_scatter,
    pointing_segments,
)

T0, DEPTH, T14, TAU = 0.08, 0.015, 0.08, 0.012  # transit centre [d], depth, duration [d], ingress [d]
VAR_AMP, VAR_PERIOD = 0.03, 0.07  # sinusoidal variable among the comparison candidates


VARIABLE = 1  #: index of the variable star in synthetic_field


def trapezoid(t: np.ndarray) -> np.ndarray:
    return 1 - DEPTH * np.clip((T14 / 2 - np.abs(t - T0)) / TAU, 0, 1)


def synthetic_field(seed: int, *, n_star: int = 30, n_ep: int = 160, pointing_jumps: bool = False):
    """Star 0: transiting target; star 1: sinusoidal variable of similar brightness.

    All stars see one transparency curve (3 % wave, random walk, a cloud at 45 % loss
    for six epochs); errors are photon + background noise [electron].
    """
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 0.16, n_ep)
    base = 10 ** rng.uniform(4.5, 5.8, n_star)
    base[0], base[1] = 2.0e5, 1.8e5
    trans = 1 + 0.03 * np.sin(2 * np.pi * t / 0.11) + np.cumsum(rng.normal(0, 0.004, n_ep))
    trans[60:66] *= 0.55
    model = np.ones((n_ep, n_star))
    model[:, 0] = trapezoid(t)
    model[:, 1] = 1 + VAR_AMP * np.sin(2 * np.pi * t / VAR_PERIOD + 0.3)
    segments = np.zeros(n_ep, dtype=np.int64)
    if pointing_jumps:
        # the pointing jumps twice; each star lands on a different flat-field error
        segments = np.repeat([0, 1, 2], [50, 60, n_ep - 110])
        model *= (1 + rng.normal(0, 0.01, (3, n_star)))[segments]
    flux_true = base[None, :] * model * trans[:, None]
    err = np.sqrt(flux_true + 300.0**2)
    flux = flux_true + rng.normal(0, 1, flux_true.shape) * err
    return t, flux, err, trans, segments


def _depth(t: np.ndarray, rel: np.ndarray) -> float:
    in_tr = np.abs(t - T0) < T14 / 2 - TAU
    out_tr = np.abs(t - T0) > T14 / 2 + 0.005
    return 1 - np.median(rel[in_tr]) / np.median(rel[out_tr])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transit_depth_recovered_and_variable_rejected(seed):
    t, flux, err, _, _ = synthetic_field(seed)
    res = differential_photometry(flux, err, target=0, time=t)
    assert abs(_depth(t, res.rel_flux) - DEPTH) < 0.1 * DEPTH
    assert VARIABLE in res.rejected and VARIABLE not in res.comparison
    assert 0 not in res.comparison and len(res.comparison) == 19  # n_max=20 candidates minus the variable
    np.testing.assert_allclose(res.weights.sum(), 1.0)
    # the cloud shows in the ensemble flux, not in the relative flux
    ens = res.ensemble_flux / np.median(res.ensemble_flux)
    assert np.all(ens[60:66] < 0.7) and np.median(ens[:50]) > 0.9
    assert abs(np.median(res.rel_flux[60:66]) - 1.0) < 0.02
    # errors: the propagated rel_flux_err matches the scatter out of transit (within 20 %)
    out_tr = np.abs(t - T0) > T14 / 2 + 0.005
    ratio = np.std(res.rel_flux[out_tr]) / np.median(res.rel_flux_err[out_tr])
    assert 0.8 < ratio < 1.25


def test_sinusoidal_variable_amplitude_recovered():
    t, flux, err, _, _ = synthetic_field(4)
    res = differential_photometry(flux, err, target=1, time=t)
    design = np.column_stack(
        [np.ones_like(t), np.sin(2 * np.pi * t / VAR_PERIOD), np.cos(2 * np.pi * t / VAR_PERIOD)]
    )
    coef, *_ = np.linalg.lstsq(design, res.rel_flux, rcond=None)
    amp = np.hypot(coef[1], coef[2]) / coef[0]
    assert abs(amp - VAR_AMP) < 0.05 * VAR_AMP
    assert 0 in res.comparison or 0 in res.rejected  # the transiting star is just another candidate here


def test_pointing_jumps_do_not_count_as_scatter():
    t, flux, err, _, segments = synthetic_field(5, pointing_jumps=True)
    with_segments = differential_photometry(flux, err, target=0, time=t, segments=segments)
    without = differential_photometry(flux, err, target=0, time=t)
    # per-segment normalisation: stable stars keep their photon-noise scatter (~0.3 %), the variable still goes
    stable = [s for s in with_segments.comparison if s != 1]
    seg_scatter = np.median([with_segments.scatter[s] for s in stable])
    raw_scatter = np.median([without.scatter[s] for s in stable if s in without.scatter])
    assert seg_scatter < 0.005 and raw_scatter > 1.5 * seg_scatter
    assert VARIABLE in with_segments.rejected


def test_named_comparisons_and_flux_weighting():
    _t, flux, err, _, _ = synthetic_field(6)
    cfg = ComparisonConfig(weighting="flux")
    res = differential_photometry(flux, err, target=0, comparison=[2, 3, 4], config=cfg)
    assert list(res.comparison) == [2, 3, 4] and res.rejected == {}
    # flux weighting = plain sum of the comparison fluxes, up to the median normalisation
    plain = flux[:, 0] / flux[:, [2, 3, 4]].sum(axis=1)
    np.testing.assert_allclose(res.rel_flux, plain / np.median(plain), rtol=1e-10)
    np.testing.assert_allclose(res.ensemble_flux, flux[:, [2, 3, 4]].sum(axis=1), rtol=1e-10)
    # a named variable stays in unless asked otherwise
    kept = differential_photometry(flux, err, target=0, comparison=[1, 2, 3, 4, 5])
    assert VARIABLE in kept.comparison
    dropped = differential_photometry(
        flux, err, target=0, comparison=[1, 2, 3, 4, 5], config=ComparisonConfig(reject_named=True)
    )
    assert VARIABLE in dropped.rejected


def test_missing_epochs_flags_and_failures():
    _t, flux, err, _, _ = synthetic_field(7)
    flags = np.zeros(flux.shape, np.int64)
    flags[10, 5] = PhotFlag.SAT  # star 5 saturated once: not a candidate with min_coverage=1
    flux[20:25, 6] = np.nan  # star 6 missing in 5 of 160 epochs
    res = differential_photometry(flux, err, target=0, flags=flags)
    assert 5 not in res.candidates and 6 not in res.candidates
    loose = differential_photometry(
        flux, err, target=0, flags=flags, config=ComparisonConfig(min_coverage=0.9)
    )
    assert 6 in loose.candidates or 6 in loose.rejected or len(loose.candidates) == 20
    assert np.all(np.isfinite(loose.rel_flux))
    flux[30, 0] = np.nan  # target not measured: NaN there only
    res2 = differential_photometry(flux, err, target=0)
    assert np.isnan(res2.rel_flux[30]) and np.isfinite(res2.rel_flux[31])
    with pytest.raises(SolveError, match="comparison"):
        differential_photometry(flux[:, :2], err[:, :2], target=0, config=ComparisonConfig(min_comparisons=2))
    with pytest.raises(BadInputError):
        differential_photometry(flux, err, target=99)


def test_colour_match_prefers_similar_colours():
    _t, flux, err, _, _ = synthetic_field(8)
    colour = np.full(flux.shape[1], 0.6)
    colour[[2, 3, 4]] = 2.5  # far too red
    res = differential_photometry(flux, err, target=0, colour=colour)
    assert not set(res.candidates) & {2, 3, 4}


def test_scatter_statistics():
    rng = np.random.default_rng(9)
    noise = rng.normal(0, 0.01, 5000)
    assert point_to_point_scatter(noise) == pytest.approx(0.01, rel=0.05)
    trend = np.linspace(0, 0.5, 5000) + noise  # a slow trend does not count
    assert point_to_point_scatter(trend) == pytest.approx(0.01, rel=0.05)
    assert np.isnan(point_to_point_scatter(np.array([1.0])))
    spiky = noise.copy()
    spiky[::500] += 1.0
    assert clipped_std(spiky) == pytest.approx(0.01, rel=0.05)
    assert clipped_std(np.sin(np.linspace(0, 20, 2000))) == pytest.approx(1 / np.sqrt(2), rel=0.02)


def test_pointing_segments():
    x = np.array([100.0, 100.5, 99.8, 140.0, 140.2, np.nan, 139.9, 100.1])
    y = np.array([50.0, 50.2, 49.9, 50.0, 50.1, np.nan, 50.3, 50.0])
    assert list(pointing_segments(x, y, jump_pix=10.0)) == [0, 0, 0, 1, 1, 1, 1, 2]


def test_drift_is_not_a_jump_but_a_repointing_is():
    """A field drifting 120 px over 4 h in 4-minute steps (2 px each, some gaps of 5 steps)
    stays one segment; a 12 px re-pointing in the middle of the drift starts a new one."""
    t = np.arange(60) * 4.0 / 60.0  # hours
    t = np.delete(t, [20, 21, 22, 23])  # a gap: the drift over it is 10 px
    x = 100.0 + 30.0 * t + np.random.default_rng(1).normal(0, 0.3, t.size)
    y = 80.0 - 12.0 * t
    assert set(pointing_segments(x, y, jump_pix=5.0, time=t)) == {0}
    x[35:] += 12.0
    labels = pointing_segments(x, y, jump_pix=5.0, time=t)
    assert list(np.unique(labels)) == [0, 1] and labels[34] == 0 and labels[35] == 1


def test_check_curves_single_out_a_variable_comparison():
    """Five comparison stars, one varying by 4 % (sinusoid): its check curve (it over the others)
    carries the whole variation; the constant stars' curves see it diluted by the other four."""
    from darkroom.timeseries.differential import check_curves

    rng = np.random.default_rng(3)
    n = 200
    t = np.linspace(0.0, 1.0, n)
    clouds = 1.0 - 0.3 * (np.abs(t - 0.5) < 0.05)  # shared: cancels in every ratio
    base = np.array([5e4, 3e4, 2e4, 4e4, 1e4])
    flux = clouds[:, None] * base[None, :] * (1.0 + 0.002 * rng.standard_normal((n, 5)))
    flux[:, 2] *= 1.0 + 0.04 * np.sin(2 * np.pi * 3 * t)
    flux[17, 4] = np.nan  # a missing measurement stays missing
    comparison = np.arange(5)
    curves = check_curves(flux, comparison, np.full(5, 0.2))
    rms = np.nanstd(curves, axis=0)
    assert rms[2] == pytest.approx(0.04 / np.sqrt(2), rel=0.1)
    assert np.all(np.delete(rms, 2) < 0.35 * rms[2])
    assert np.isnan(curves[17, 4]) and np.isfinite(curves[17, :4]).all()
    assert np.nanmedian(curves, axis=0) == pytest.approx(np.ones(5))
    assert np.isnan(check_curves(flux, np.array([1]), np.ones(1))).all()  # one star: nothing to check
