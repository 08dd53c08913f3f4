"""The night-sky flat (darkroom.calib.skyflat) on simulated lights with a known pixel response.

Frames: a 0.5 % rms white pixel response (PRNU) times 4 % vignetting, a sky of 450 e- per
pixel, Poisson and read noise, and ~150 Gaussian stars (FWHM 2 px) that drift across the
detector. The flat holds the response below its block size, so it is compared with the
true response divided by its own smooth level.
"""

from __future__ import annotations

import numpy as np
import pytest

from darkroom.calib.badpix import smooth_level
from darkroom.calib.settings import SkyFlatConfig
from darkroom.calib.skyflat import make_sky_flat

SHAPE = (160, 200)
SKY_E = 450.0
READ_E = 5.0
GAIN = 6.0


def _lights(
    n: int, *, drift_pix: float, pedestal_adu: float = 0.0, sky_change: float = 0.0, seed: int = 1
) -> tuple[list[tuple[np.ndarray, None]], np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """(frames [adu], true high-passed response, star (x, y) per frame). The pedestal (a bias
    level with a column pattern of 1 adu rms and a 1 adu gradient) is added when given; the sky
    falls by ``sky_change`` over the night (as the airmass drops)."""
    rng = np.random.default_rng(seed)
    ny, nx = SHAPE
    prnu = 1.0 + 0.005 * rng.standard_normal(SHAPE)
    yy, xx = np.mgrid[0:ny, 0:nx]
    vignetting = 1.0 - 0.04 * ((xx - nx / 2) ** 2 + (yy - ny / 2) ** 2) / ((nx / 2) ** 2 + (ny / 2) ** 2)
    pedestal = np.zeros(SHAPE)
    if pedestal_adu:
        pedestal = pedestal_adu + rng.normal(0.0, 1.0, nx)[None, :] + xx / nx
    n_stars = 150
    sx = rng.uniform(-drift_pix, nx + drift_pix, n_stars)
    sy = rng.uniform(-drift_pix, ny + drift_pix, n_stars)
    flux = 10 ** rng.uniform(2.5, 5.0, n_stars)
    sig = 2.0 / 2.3548
    frames, positions = [], []
    for k in range(n):
        t = k / max(n - 1, 1)
        image = np.full(SHAPE, SKY_E * (1.0 + sky_change * (1.0 - t)))
        x, y = sx + drift_pix * t, sy - 0.5 * drift_pix * t
        inside = (x > -8) & (x < nx + 8) & (y > -8) & (y < ny + 8)
        for x0, y0, f in zip(x[inside], y[inside], flux[inside], strict=True):
            x1, x2 = max(0, int(x0) - 7), min(nx, int(x0) + 8)
            y1, y2 = max(0, int(y0) - 7), min(ny, int(y0) + 8)
            r2 = (xx[y1:y2, x1:x2] - x0) ** 2 + (yy[y1:y2, x1:x2] - y0) ** 2
            image[y1:y2, x1:x2] += f * np.exp(-r2 / (2 * sig**2)) / (2 * np.pi * sig**2)
        electrons = rng.poisson(image * vignetting * prnu) + rng.normal(0.0, READ_E, SHAPE)
        frames.append(((electrons / GAIN + pedestal).astype(np.float32), None))
        positions.append((x[inside], y[inside]))
    truth = prnu / smooth_level(prnu, box_pix=64)
    return frames, truth, positions


def _residual(flat: np.ndarray, truth: np.ndarray, use: np.ndarray) -> np.ndarray:
    r = flat[use] / truth[use]
    return r / np.median(r) - 1.0


def test_sky_flat_recovers_the_pixel_response_to_the_photon_noise():
    frames, truth, _ = _lights(60, drift_pix=60.0)
    sf = make_sky_flat(frames, zero_known=True)
    assert sf.made and sf.zero_level == "known" and sf.response_scale == 1.0
    assert sf.n_frames == 60 and sf.motion_pix > 20
    use = sf.variance > 0
    assert use.mean() > 0.99  # every pixel saw blank sky in enough frames
    res = _residual(sf.flat, truth, use)
    rms = float(np.std(res))
    # the photon noise of the sky in the frames where a pixel was blank: 1 / sqrt(N sky_e), read noise added
    predicted = np.sqrt((SKY_E + READ_E**2) / (sf.samples_median * SKY_E**2))
    assert rms == pytest.approx(predicted, rel=0.2), (rms, predicted)
    assert float(np.median(np.sqrt(sf.variance[use]))) == pytest.approx(predicted, rel=0.2)
    # what is left is noise, not a part of the response missed or scaled: no correlation with it
    assert abs(float(np.corrcoef(res, truth[use] - 1.0)[0, 1])) < 0.05


def test_sky_flat_with_an_unknown_zero_level_measures_the_response_scale():
    """A pedestal of 100 adu (bias level and column pattern) under a 75-150 adu sky: the mean ratio
    of the lights holds only a = S / (P + S) of the response; the sky's change over the night
    (twice as bright at the start, as in late twilight) measures a, and the column pattern is not
    taken for response."""
    frames, truth, _ = _lights(120, drift_pix=60.0, pedestal_adu=100.0, sky_change=1.0)
    sf = make_sky_flat(frames, zero_known=False)
    assert sf.made, sf.reason
    sky_adu = SKY_E / GAIN * np.linspace(2.0, 1.0, 120)
    # a is measured to ~5-10 % here (the slopes are noisy: 4 % per pixel); 10 % of the response
    # left in is 0.05 %, well below the flat's photon noise
    assert sf.response_scale == pytest.approx(float(np.mean(sky_adu / (100.0 + sky_adu))), rel=0.15)
    use = sf.variance > 0
    res = _residual(sf.flat, truth, use)
    # the sky's photon noise over the response's share of the level (the pedestal adds none)
    sky_e = SKY_E * np.linspace(2.0, 1.0, 120)
    predicted = float(np.sqrt(np.mean((sky_e + READ_E**2) / sky_e**2) / sf.samples_median))
    assert float(np.std(res)) == pytest.approx(predicted, rel=0.25)
    assert abs(float(np.corrcoef(res, truth[use] - 1.0)[0, 1])) < 0.2
    # no column pattern left: the column means of the residual are noise
    cols = np.where(use, sf.flat / truth - 1.0, np.nan)
    assert float(np.nanstd(np.nanmean(cols, axis=0))) < 3 * predicted / np.sqrt(SHAPE[0])


def test_sky_flat_refuses_an_unknown_zero_level_under_a_constant_sky():
    frames, _, _ = _lights(40, drift_pix=60.0, pedestal_adu=100.0, sky_change=0.0)
    sf = make_sky_flat(frames, zero_known=False)
    assert not sf.made and "zero level is unknown" in sf.reason


def test_sky_flat_on_a_static_field_is_refused_and_forced_has_no_holes():
    frames, truth, positions = _lights(60, drift_pix=0.3)
    sf = make_sky_flat(frames, zero_known=True)
    assert not sf.made and "moved" in sf.reason and sf.motion_pix < 10
    forced = make_sky_flat(frames, zero_known=True, config=SkyFlatConfig(min_motion_pix=0.0))
    assert forced.made and forced.filled_fraction > 0.05  # the stars' pixels: too few samples
    # at the stars' cores the flat is the smooth 1 (or the measured response), never a hole
    x, y = positions[0]
    ix, iy = np.round(x).astype(int), np.round(y).astype(int)
    on = (ix >= 0) & (ix < SHAPE[1]) & (iy >= 0) & (iy < SHAPE[0])
    core = forced.flat[iy[on], ix[on]] / truth[iy[on], ix[on]] - 1.0
    assert np.all(np.abs(core) < 0.02), core.min()
    assert abs(float(np.median(core))) < 0.002
