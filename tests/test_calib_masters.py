"""Masters: synthetic known answers, the ARCSAT night (bias/dark/flat, the defect near (824, 357)), comparison."""

from __future__ import annotations

import glob
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from darkroom.calib._stats import robust_std
from darkroom.calib.badpix import build_bad_pixel_mask
from darkroom.calib.masters import (
    MasterComparisonConfig,
    compare_masters,
    make_master_bias,
    make_master_dark,
    make_master_flat,
    master_from_hdus,
    master_to_hdus,
)
from darkroom.errors import BadInputError, CalibrationError, MissingCalibrationError

SHAPE = (140, 150)
GAIN, RN_ADU = 2.0, 4.0


def _detector(seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    bias = 300 + 0.05 * xx + 2 * np.sin(yy / 5.0)
    dark_rate = 0.05 + np.zeros(SHAPE)  # adu/s
    dark_rate[rng.integers(0, SHAPE[0], 30), rng.integers(0, SHAPE[1], 30)] = 20.0  # hot pixels
    flat = (1 - 0.2 * ((xx - 75) ** 2 + (yy - 70) ** 2) / 75**2) * (1 + 0.01 * rng.standard_normal(SHAPE))

    def expose(t, light=0.0):
        e = rng.poisson(np.clip((dark_rate * t + light * flat) * GAIN, 0, None)).astype(np.float64)
        return (bias + e / GAIN + RN_ADU * rng.standard_normal(SHAPE)).astype(np.float32)

    return bias, dark_rate, flat / np.median(flat), expose


def test_synthetic_masters_recover_bias_dark_and_flat():
    bias, rate, flat, expose = _detector()
    mb = make_master_bias([expose(0.0) for _ in range(9)])
    assert robust_std(mb.data - bias) == pytest.approx(RN_ADU / 3, rel=0.1)
    assert mb.read_noise_adu == pytest.approx(RN_ADU, rel=0.05)
    md = make_master_dark([expose(100.0) for _ in range(5)], exptime_s=100.0, bias=mb)
    assert md.exptime_s == 100.0 and not md.includes_bias
    np.testing.assert_allclose(np.median(md.data), 5.0, atol=0.3)
    hot = rate > 1
    np.testing.assert_allclose(md.data[hot], 2000.0, rtol=0.05)
    flats = [expose(10.0, light=level) for level in (9000.0, 10000.0, 11000.0)]
    mf = make_master_flat(flats, bias=mb, dark=md, exptime_s=10.0, filter="R")
    assert float(np.nanmedian(mf.data)) == pytest.approx(1.0, abs=1e-3)
    # per-pixel flat error: shot noise of 3 x 1e4 adu x gain 2 = 6e4 e- -> 0.4%, plus the master noise
    assert robust_std(mf.data - flat) < 0.006
    assert mf.gain_e_per_adu == pytest.approx(GAIN, rel=0.05)
    assert mf.filter == "R" and mf.level_adu == pytest.approx(float(np.median(flats[1] - bias)), rel=0.02)
    # the variance planes describe the scatter
    z = (mb.data - bias) / np.sqrt(mb.variance)
    assert robust_std(z) == pytest.approx(1.0, rel=0.1)


def test_dark_without_bias_keeps_the_bias_level():
    bias, _, _, expose = _detector(1)
    md = make_master_dark([expose(30.0) for _ in range(3)], exptime_s=30.0, bias=None)
    assert md.includes_bias
    assert float(np.median(md.data - bias)) == pytest.approx(1.5, abs=0.5)


def test_master_errors():
    _, _, _, expose = _detector(2)
    frames = [expose(10.0) for _ in range(3)]
    with pytest.raises(CalibrationError, match="exposure times span"):
        make_master_dark(frames, exptime_s=[10.0, 10.0, 20.0], bias=None)
    with pytest.raises(MissingCalibrationError, match="at least 1 frames"):
        make_master_bias([])
    with pytest.raises(BadInputError, match="exposure times"):
        mb = make_master_bias(frames)
        md = make_master_dark(frames, exptime_s=10.0, bias=mb)
        make_master_flat(frames, bias=mb, dark=md)


def test_fits_round_trip():
    _, _, _, expose = _detector(3)
    mb = make_master_bias([expose(0.0) for _ in range(3)]).with_name("bias_2025-06-02.fits")
    back = master_from_hdus(master_to_hdus(mb), name=mb.name)
    np.testing.assert_array_equal(back.data, mb.data)
    np.testing.assert_array_equal(back.variance, mb.variance)
    assert (back.kind, back.n_inputs, back.read_noise_adu, back.name) == (
        "bias",
        3,
        mb.read_noise_adu,
        mb.name,
    )


# ------------------------------------------------------------------ the ARCSAT night


@pytest.fixture(scope="module")
def arcsat_masters(arcsat_dir: Path):
    def read(pattern):
        files = sorted(glob.glob(str(arcsat_dir / pattern)))
        return [fits.getdata(f).astype(np.float32) for f in files], files

    biases, _ = read("Bias_*.fits.gz")
    darks, dfiles = read("Dark_*.fits.gz")
    flats, ffiles = read("domeflat_z_*.fits.gz")
    assert (len(biases), len(darks), len(flats)) == (5, 5, 5)
    assert fits.getheader(dfiles[0])["EXPTIME"] == 60.0
    t_flat = fits.getheader(ffiles[0])["EXPTIME"]
    mb = make_master_bias(biases)
    md = make_master_dark(darks, exptime_s=60.0, bias=mb)
    mf = make_master_flat(flats, bias=mb, dark=md, exptime_s=t_flat, filter="z")
    return biases, mb, md, mf


def test_arcsat_masters(arcsat_masters):
    _, mb, md, mf = arcsat_masters
    assert mb.n_inputs == md.n_inputs == mf.n_inputs == 5
    assert 1300 < mb.mean < 1400 and mb.rejected_fraction < 0.02
    assert 10 < mb.read_noise_adu < 14  # robust_std(b0 - b1) / sqrt(2) = 11.5-12.1 adu
    assert 0 < md.mean < 20  # dark current of 60 s at -25 C
    assert float(np.nanmedian(mf.data)) == pytest.approx(1.0, abs=1e-3)
    assert 0.5 < mf.gain_e_per_adu < 3.0
    assert mf.level_adu > 15000


def test_arcsat_fixed_defect_is_in_the_bad_pixel_mask(arcsat_masters):
    """The defect near (x, y) = (824, 357): 0-based [row 357, column 824] (from the data, see below)."""
    biases, mb, md, mf = arcsat_masters
    # the pixel is saturated in every 60 s dark (~63000 adu above bias) and absent in the biases:
    # numpy index [357, 824] is the peak, so (824, 357) are 0-based x, y (FITS pixel (825, 358))
    assert md.data[357, 824] > 50000
    assert md.data[356:359, 823:826].argmax() == 4
    assert abs(biases[0][357, 824] - mb.mean) < 100
    bpm = build_bad_pixel_mask(mb.shape, dark=md.measured_data, dark_exptime_s=60.0, flat=mf.data)
    assert bpm.mask[357, 824]
    assert bpm.mask[357, 825]  # its over-responding neighbour in the flat (2.3 x)
    assert bpm.n_bad < 0.03 * bpm.mask.size


def test_compare_masters_flags_large_changes_only(arcsat_masters):
    biases, _mb, _, _ = arcsat_masters
    a = make_master_bias(biases[:2])
    b = make_master_bias(biases[3:])  # independent frames of the same night
    same = compare_masters(b, a)
    assert not same.flagged, same.reasons
    assert same.residual_scatter == pytest.approx(1.0, rel=0.25)
    shifted = replace(b, data=b.data + 40.0, mean=b.mean + 40.0)
    res = compare_masters(shifted, a)
    assert res.flagged and any("mean level" in r for r in res.reasons)
    hot = b.data.copy()
    hot.ravel()[::50] += 500.0  # 2% new defects
    res = compare_masters(replace(b, data=hot), a)
    assert res.flagged and any("pixels changed" in r for r in res.reasons)
    strict = compare_masters(b, a, config=MasterComparisonConfig(max_residual_scatter=0.5))
    assert strict.flagged
