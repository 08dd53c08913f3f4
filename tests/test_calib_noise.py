"""Gain, read noise, linearity: the ST-7 photon-transfer set and synthetic known answers."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from darkroom.calib.noise import (
    gain_from_flat_pair,
    linearity_from_flats,
    photon_transfer_curve,
    two_frame_gain_read_noise,
)
from darkroom.errors import BadInputError

# The ST-7 frames (657 x 495) have no unilluminated overscan strip: row 0 is at half level, rows 1-20 are a
# shadowed band, a hair shadow runs near x = 300-330 and a dust spot sits near (x, y) = (395, 300). The
# photon-transfer region is the flat illumination plateau right of them: 0-based rows 250-349, columns
# 420-519 (FITS [421:520,251:350]).
REGION = (slice(250, 350), slice(420, 520))


def _read(path: Path) -> np.ndarray:
    with warnings.catch_warnings():  # the CCDSoft headers are not FITS-standard (fixed on read)
        warnings.simplefilter("ignore")
        return fits.getdata(path).astype(np.float32)


@pytest.fixture(scope="module")
def st7(data_dir: Path):
    d = data_dir / "st7-ptc-linearity"
    biases = [_read(d / f"bias{i}.FIT.gz") for i in (1, 2, 3)]
    flats, times, names = [], [], []
    for p in sorted(d.glob("flat*.FIT.gz")):
        m = re.match(r"flat([\d.]+?)(\(\d\))?\.FIT\.gz$", p.name)
        assert m, p.name
        flats.append(_read(p))
        times.append(float(m.group(1)))  # exposure time is in the file name (the header has EXPOSURE too)
        names.append(p.name)
    return biases, flats, times, names


def test_st7_ptc_agrees_with_textbook_two_frame_estimate(st7):
    biases, flats, times, names = st7
    # the textbook (Janesick) estimate, written out here: bias1, bias2 and the closest-level pair at 29.5 s
    b1, b2 = (biases[0][REGION].astype(np.float64), biases[1][REGION].astype(np.float64))
    f1 = flats[names.index("flat29.5(2).FIT.gz")][REGION].astype(np.float64)
    f2 = flats[names.index("flat29.5(3).FIT.gz")][REGION].astype(np.float64)
    gain_tb = ((f1.mean() + f2.mean()) - (b1.mean() + b2.mean())) / (np.var(f1 - f2) - np.var(b1 - b2))
    rn_tb = gain_tb * np.std(b1 - b2) / np.sqrt(2)

    ptc = photon_transfer_curve(biases, flats, times, region=REGION)
    assert ptc.gain_e_per_adu == pytest.approx(gain_tb, rel=0.05)
    assert ptc.read_noise_e == pytest.approx(rn_tb, rel=0.05)
    assert int(np.sum(ptc.points["used"])) >= 15  # a curve, not one point
    # the library's two-frame function gives the textbook value (clipping changes nothing here)
    tf = two_frame_gain_read_noise(
        biases[0],
        biases[1],
        flats[names.index("flat29.5(2).FIT.gz")],
        flats[names.index("flat29.5(3).FIT.gz")],
        region=REGION,
    )
    assert tf.gain_e_per_adu == pytest.approx(gain_tb, rel=0.02)
    assert tf.read_noise_e == pytest.approx(rn_tb, rel=0.02)


def test_st7_saturation_and_linear_range(st7):
    biases, flats, times, _ = st7
    ptc = photon_transfer_curve(biases, flats, times, region=REGION)
    # flats of 108 s and longer sit on a plateau at ~41000 adu above bias: the pixels are full
    assert 39000 < ptc.saturation_adu < 43000
    # the variance follows the shot-noise line up to at least 20000 adu and stops before the plateau
    assert 15000 < ptc.full_well_adu < ptc.saturation_adu
    lin = linearity_from_flats(flats, times, bias=np.mean(biases, axis=0), region=REGION)
    assert lin.saturation_adu == pytest.approx(ptc.saturation_adu, rel=0.01)
    assert lin.rate_adu_per_s > 0
    used = np.asarray(lin.table["used"])
    assert not used[np.asarray(times) >= 108].any()


def test_two_frame_and_ptc_on_synthetic_flats():
    """Known answer: gain 2.0 e/adu, read noise 5 e, 1% pixel response pattern, full well at 60000 adu."""
    rng = np.random.default_rng(7)
    shape = (120, 130)
    gain, rn_e, bias = 2.0, 5.0, 500.0
    prnu = 1 + 0.01 * rng.standard_normal(shape)

    def frame(level_adu):
        e = rng.poisson(np.clip(level_adu * prnu, 0, None) * gain).astype(np.float64)
        adu = bias + (e + rn_e * rng.standard_normal(shape)) / gain
        return np.minimum(adu, bias + 60000.0).astype(np.float32)

    biases = [frame(0.0) for _ in range(2)]
    levels = [50, 200, 800, 3000, 8000, 15000, 25000, 35000, 45000, 70000, 90000]
    flats, times = [], []
    for k, lv in enumerate(levels):  # a repeat pair at each level; 10% lamp drift between the two
        for drift in (1.0, 1.1):
            flats.append(frame(lv * drift))
            times.append(float(k + 1))
    tf = two_frame_gain_read_noise(biases[0], biases[1], flats[6], flats[7])
    assert tf.gain_e_per_adu == pytest.approx(gain, rel=0.05)
    assert tf.read_noise_e == pytest.approx(rn_e, rel=0.05)
    ptc = photon_transfer_curve(biases, flats, times)
    assert ptc.gain_e_per_adu == pytest.approx(gain, rel=0.03)
    assert ptc.read_noise_e == pytest.approx(rn_e, rel=0.05)
    assert ptc.saturation_adu == pytest.approx(60000, rel=0.02)
    g = gain_from_flat_pair(flats[8] - bias, flats[9] - bias, read_noise_adu=rn_e / gain)
    assert g == pytest.approx(gain, rel=0.05)


def test_errors():
    a = np.zeros((10, 10), dtype=np.float32)
    with pytest.raises(BadInputError, match="two biases"):
        photon_transfer_curve([a], [a, a], [1.0, 2.0])
    with pytest.raises(BadInputError, match="exposure times"):
        photon_transfer_curve([a, a], [a, a], [1.0])
