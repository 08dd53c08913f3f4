"""Calibration of a frame: a synthetic detector with truth, the ARCSAT night, the SAAO overscan frame, errors."""

from __future__ import annotations

import numpy as np
import pytest
import sep
from astropy.io import fits
from scipy import ndimage as ndi

from darkroom.calib._stats import robust_std
from darkroom.calib.badpix import build_bad_pixel_mask
from darkroom.calib.interp import interpolate_masked
from darkroom.calib.masters import make_master_bias, make_master_dark, make_master_flat
from darkroom.calib.process import CalibrationConfig, RequireConfig, calibrate_frame, prepare_raw
from darkroom.calib.synthetic import cosmic_ray_image, star_image
from darkroom.errors import BadInputError, CalibrationError, MissingCalibrationError
from darkroom.instruments.metadata import FrameMetadata
from darkroom.maskbits import MaskBit

# ------------------------------------------------------------------ a synthetic detector with truth
NY, NX = 256, 300  # science area; the raw frame has 16 overscan columns and 4 unused ones on the left
OVERSCAN, TRIM = "[1:16,1:256]", "[21:320,1:256]"
GAIN, RN_E = 1.5, 6.0
HOT = [(40, 50), (200, 100), (128, 250), (17, 280)]  # (row, col) of hot pixels
DEAD_COL = 123


class Detector:
    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:NY, 0:NX]
        self.bias = 0.02 * xx + 1.5 * np.cos(yy / 9.0)  # fixed pattern above the overscan level
        self.dark_rate = np.full((NY, NX), 0.02)  # adu/s
        for y, x in HOT:
            self.dark_rate[y, x] = 5.0
        r2 = ((xx - NX / 2) ** 2 + (yy - NY / 2) ** 2) / (NX / 2) ** 2
        self.flat = (1 - 0.15 * r2) * (1 + 0.01 * self.rng.standard_normal((NY, NX)))
        self.flat[:, DEAD_COL] = 0.02
        self.flat /= np.median(self.flat)

    def expose(self, t, light=None, crs=None):
        level = 1000 + 3 * self.rng.standard_normal()  # the overscan level drifts frame to frame
        sig = self.dark_rate * t + (0 if light is None else light * self.flat)
        e = self.rng.poisson(np.clip(sig * GAIN, 0, None)).astype(np.float64)
        img = self.bias + e / GAIN + (0 if crs is None else crs)
        raw = np.empty((NY, NX + 20))
        raw[:, 20:] = img
        raw[:, :20] = 0
        raw += level + (RN_E / GAIN) * self.rng.standard_normal(raw.shape)
        return np.minimum(np.round(raw), 65535).astype(np.float32)


def _meta(kind, exptime, filt="V"):
    return FrameMetadata(
        profile="test",
        frame_type=kind,
        instrument="synth",
        exptime_s=exptime,
        filter=filt,
        naxis1=NX + 20,
        naxis2=NY,
        overscan_section=OVERSCAN,
        trim_section=TRIM,
        gain_e_per_adu=GAIN,
        read_noise_e=RN_E,
        saturation_adu=65535.0,
    )


@pytest.fixture(scope="module")
def synth():
    det = Detector(4)
    prep = lambda raw, m: prepare_raw(raw, m).data  # noqa: E731
    biases = [prep(det.expose(0.0), _meta("bias", 0.0)) for _ in range(10)]
    mb = make_master_bias(biases).with_name("bias.fits")
    darks = [prep(det.expose(120.0), _meta("dark", 120.0)) for _ in range(5)]
    md = make_master_dark(darks, exptime_s=120.0, bias=mb).with_name("dark.fits")
    flats = [
        prep(det.expose(2.0, light=8000.0 * s), _meta("flat", 2.0)) for s in (1.0, 1.05, 0.95, 1.02, 0.98)
    ]
    mf = make_master_flat(flats, bias=mb, dark=md, exptime_s=2.0, filter="V").with_name("flat.fits")
    bpm = build_bad_pixel_mask((NY, NX), dark=md.measured_data, dark_exptime_s=120.0, flat=mf.data).with_name(
        "bpm.fits"
    )
    # the light: sky 200 adu, stars FWHM 3.5 px, one saturated star, cosmic rays
    rng = np.random.default_rng(9)
    xy = np.column_stack([rng.uniform(10, NX - 10, 40), rng.uniform(10, NY - 10, 40)])
    flux = rng.uniform(2e3, 8e4, 40)
    xy[0], flux[0] = (60.0, 200.0), 3e6  # saturated
    truth = 200.0 + star_image((NY, NX), xy, flux, fwhm_pix=3.5)
    crs = cosmic_ray_image((NY, NX), 60, rng=rng, gain_e_per_adu=GAIN)
    raw = det.expose(60.0, light=truth, crs=crs)
    return det, mb, md, mf, bpm, raw, truth, crs


def test_calibrated_frame_equals_truth_within_its_variance(synth):
    _det, mb, md, mf, bpm, raw, truth, crs = synth
    res = calibrate_frame(raw, _meta("light", 60.0), bias=mb, dark=md, flat=mf, bad_pixels=bpm)
    assert res.sci.shape == res.var.shape == res.mask.shape == (NY, NX)
    assert res.sci.dtype == res.var.dtype == np.float32
    star_free = (truth - 200.0) < 0.5 * np.sqrt(200.0 / GAIN)
    cr_free = ~ndi.binary_dilation(crs > 1.0, iterations=2)
    sky = star_free & cr_free & (res.mask == 0)
    assert sky.sum() > 0.5 * sky.size
    chi = (res.sci - truth)[sky] / np.sqrt(res.var[sky])
    assert float(np.mean(chi**2)) == pytest.approx(1.0, abs=0.1)
    assert abs(float(np.mean(chi))) < 0.05  # no bias left: overscan, bias, dark scaling, flat


def test_defects_saturation_and_cosmic_rays_in_the_mask(synth):
    _det, mb, md, mf, bpm, raw, truth, crs = synth
    res = calibrate_frame(raw, _meta("light", 60.0), bias=mb, dark=md, flat=mf, bad_pixels=bpm)
    for y, x in HOT:
        assert res.mask[y, x] & MaskBit.BAD and res.mask[y, x] & MaskBit.INTRP
    assert np.all(res.mask[:, DEAD_COL] & MaskBit.BAD)
    assert np.all(np.isfinite(res.sci)) and np.all(res.var > 0)
    # the interpolated dead column looks like its neighbours
    assert np.median(np.abs(res.sci[:, DEAD_COL] - truth[:, DEAD_COL])) < 3 * np.sqrt(200 / GAIN)
    assert res.mask[200, 60] & MaskBit.SAT
    assert res.n_saturated > 0
    strong = crs > 10 * np.sqrt(200 / GAIN)
    strong[:3] = strong[-3:] = False  # L.A.Cosmic cannot see within 3 pixels of the border
    strong[:, :3] = strong[:, -3:] = False
    strong &= (res.mask & MaskBit.SAT) == 0
    flagged = (res.mask & MaskBit.CR) != 0
    assert (flagged & strong).sum() / strong.sum() >= 0.95
    assert not np.any(flagged & (res.mask & MaskBit.SAT).astype(bool))


def test_header_names_each_master(synth):
    _det, mb, md, mf, bpm, raw, _truth, _crs = synth
    hdr = fits.Header({"OBJECT": "field", "BZERO": 32768, "CRPIX1": 100.0, "CRPIX2": 50.0})
    res = calibrate_frame(raw, _meta("light", 60.0), bias=mb, dark=md, flat=mf, bad_pixels=bpm, header=hdr)
    h = res.header
    assert (h["BIASCORR"], h["DARKCORR"], h["FLATCORR"], h["BPM"]) == (
        "bias.fits",
        "dark.fits",
        "flat.fits",
        "bpm.fits",
    )
    assert h["CRCORR"].startswith("sparse L.A.Cosmic")
    assert "BZERO" not in h and h["OBJECT"] == "field"
    assert h["CRPIX1"] == 80.0 and h["CRPIX2"] == 50.0  # trimmed 20 columns on the left
    assert h["GAIN"] == GAIN and h["RDNOISE"] == RN_E
    history = " ".join(str(c) for c in h["HISTORY"])
    assert "dark x 0.5 subtracted: dark.fits" in history and "overscan [1:16,1:256]" in history
    hdus = res.to_hdus()
    assert [x.name for x in hdus] == ["PRIMARY", "SCI", "MASK", "VAR"]
    assert hdus["MASK"].header["MP_CR"] == int(MaskBit.CR)


def test_missing_flat_raises_with_a_clear_reason(synth):
    _det, mb, md, _mf, _bpm, raw, _truth, _crs = synth
    with pytest.raises(MissingCalibrationError) as err:
        strict = CalibrationConfig(require=RequireConfig(flat=True))
        calibrate_frame(raw, _meta("light", 60.0), bias=mb, dark=md, flat=None, config=strict)
    assert err.value.reason == (
        "missing master flat: a master flat, instrument synth, binning 1x1, size 320x256, filter v is needed "
        "(set require.flat=False to skip flat correction)"
    )
    cfg = CalibrationConfig(require=RequireConfig(flat=False), do_cosmic_rays=False)
    res = calibrate_frame(raw, _meta("light", 60.0), bias=mb, dark=md, config=cfg)
    assert "FLATCORR" not in res.header and res.header["DARKCORR"] == "dark.fits"


def test_shape_mismatch_and_missing_gain(synth):
    _det, mb, md, mf, _bpm, raw, _truth, _crs = synth
    narrow = _meta("light", 60.0).model_copy(update={"trim_section": "[21:319,1:256]"})
    with pytest.raises(CalibrationError, match="master bias has shape"):
        calibrate_frame(raw, narrow, bias=mb, dark=md, flat=mf)
    m = _meta("light", 60.0).model_copy(update={"gain_e_per_adu": None})
    strict = CalibrationConfig(require=RequireConfig(flat=False), estimate_noise=False)
    with pytest.raises(CalibrationError, match="no gain"):
        calibrate_frame(raw, m, bias=mb, dark=md, config=strict)


def test_missing_gain_is_estimated_from_the_sky_and_flagged(synth):
    """With the zero level known (master bias) the gain comes from sky level / sky variance."""
    _det, mb, md, _mf, _bpm, raw, _truth, _crs = synth
    m = _meta("light", 60.0).model_copy(update={"gain_e_per_adu": None, "read_noise_e": None})
    res = calibrate_frame(
        raw, m, bias=mb, dark=md, config=CalibrationConfig(require=RequireConfig(flat=False))
    )
    assert res.noise_model.startswith("noise estimated: gain") and res.header["NOISEMOD"].startswith("noise")
    # a lower bound (flat-field structure and the master noise add to the sky variance): 1.25 here
    assert 0.75 * GAIN < res.gain_e_per_adu <= 1.05 * GAIN


def test_without_masters_or_gain_var_follows_the_sky_noise(synth):
    """No master, no overscan, no gain: VAR at the sky equals the measured sky variance."""
    _det, _mb, _md, _mf, _bpm, raw, _truth, _crs = synth
    m = _meta("light", 60.0).model_copy(
        update={"gain_e_per_adu": None, "read_noise_e": None, "overscan_section": None}
    )
    res = calibrate_frame(raw, m, config=CalibrationConfig(do_cosmic_rays=False))
    assert "zero level unknown" in res.noise_model and "1 e/adu assumed" in res.noise_model
    assert "no master bias/dark/flat" in " ".join(res.steps)
    diff = np.diff(res.sci.astype(float), axis=1)
    sky_var = (1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2)) ** 2
    assert float(np.median(res.var)) == pytest.approx(sky_var, rel=0.1)


# ------------------------------------------------------------------ SAAO: overscan and trim from the header


def test_saao_frame_without_masters(saao_frame):
    raw, hdr, meta = saao_frame
    cfg = CalibrationConfig(require=RequireConfig(bias=False, dark=False, flat=False), do_cosmic_rays=False)
    res = calibrate_frame(raw, meta, header=hdr, config=cfg)
    assert res.sci.shape == (520, 512)
    assert res.header["LTV1"] == -16 and "BIASCORR" not in res.header
    # VAR = rn^2 + signal / gain in adu^2 (signal above the overscan level)
    s = res.sci[100:400, 100:400]
    expected = (5.0 / 1.9) ** 2 + np.clip(s, 0, None) / 1.9
    np.testing.assert_allclose(res.var[100:400, 100:400], expected, rtol=1e-4)


# ------------------------------------------------------------------ the ARCSAT night


@pytest.fixture(scope="module")
def arcsat(arcsat_masters, arcsat_light):
    m = arcsat_masters
    mb = m["bias"].with_name("master_bias.fits")
    md = m["dark"].with_name("master_dark_60s.fits")
    mf = m["flat"].with_name("master_flat_z.fits")
    bpm = m["bad_pixels"].with_name("bpm.fits")
    results = []
    for index in range(3):
        raw, hdr, meta = arcsat_light(index)
        results.append(calibrate_frame(raw, meta, bias=mb, dark=md, flat=mf, bad_pixels=bpm, header=hdr))
    return mf, results


def test_arcsat_lights_are_sane(arcsat):
    mf, results = arcsat
    for res in results:
        good = res.mask == 0
        bkg = sep.Background(res.sci, mask=~good, bw=64, bh=64)
        back = bkg.back()
        # sky ~flat after the flat field: the 5-95% range of the background map is < 6% of the sky
        # (a linear sky gradient of ~4% remains: it is there before the flat field too), and < 3% once a
        # plane is removed (the raw frame with bias and dark only: 3.0-3.5%)
        assert np.ptp(np.percentile(back, [5, 95])) < 0.06 * bkg.globalback
        yy, xx = np.mgrid[0:1024:8, 0:1024:8]
        a = np.column_stack([np.ones(yy.size), xx.ravel(), yy.ravel()])
        b = back[::8, ::8].ravel()
        coef, *_ = np.linalg.lstsq(a, b, rcond=None)
        assert np.ptp(np.percentile(b - a @ coef, [5, 95])) < 0.03 * bkg.globalback
        resid = res.sci - back
        _, seg = sep.extract(resid, 3.0, err=bkg.globalrms, mask=~good, segmentation_map=True)
        sky = good & (seg == 0)
        measured = robust_std(resid[sky]) ** 2
        model = float(np.median(res.var[sky]))
        assert model == pytest.approx(measured, rel=0.2)
        # VAR ~ sky / gain + rn^2 (the masters add ~10%)
        simple = bkg.globalback / res.gain_e_per_adu + (res.read_noise_e / res.gain_e_per_adu) ** 2
        assert simple == pytest.approx(measured, rel=0.2)
        assert np.count_nonzero(res.mask & MaskBit.BAD) < 0.03 * res.mask.size
        assert 0 < res.n_cosmic_pixels < 1e-3 * res.mask.size
        assert res.header["FLATCORR"] == "master_flat_z.fits" and res.header["BPM"] == "bpm.fits"
        assert res.header["CRPIX1"] == 512.0  # untrimmed: the WCS is unchanged
        assert res.gain_e_per_adu == mf.gain_e_per_adu  # no GAIN in the ARCSAT header: measured on the flats


def test_interpolation_is_the_inverse_distance_squared_mean_of_usable_neighbours():
    rng = np.random.default_rng(2)
    img = rng.uniform(100.0, 200.0, (30, 40)).astype(np.float32)
    masked = np.zeros(img.shape, bool)
    masked[10, 12] = True  # one pixel: its 5x5 neighbourhood
    masked[20:26, 5:11] = True  # a 6x6 block: its centre needs the radius doubled
    img[9, 12] = np.nan  # a NaN neighbour is not used
    filled, done = interpolate_masked(img, masked)
    dj, di = np.mgrid[-2:3, -2:3]
    w = np.where((dj == 0) & (di == 0), 0.0, 1.0 / np.maximum(dj**2 + di**2, 1))
    patch = img[8:13, 10:15].astype(np.float64)
    usable = np.isfinite(patch) & ~masked[8:13, 10:15]
    want = np.sum(np.where(usable, w * patch, 0.0)) / np.sum(np.where(usable, w, 0.0))
    assert filled[10, 12] == pytest.approx(want, rel=1e-6)
    assert done[masked].all() and not done[~masked].any()
    assert np.all((filled[20:26, 5:11] > 100.0) & (filled[20:26, 5:11] < 200.0))
    # several images share the weights; in place
    var = np.full(img.shape, 4.0, np.float32)
    done2 = interpolate_masked([img, var], masked, copy=False)
    assert np.array_equal(done2, done) and np.all(var[masked] == 4.0) and img[10, 12] == filled[10, 12]


def test_bad_pixel_fills_made_before_the_cosmic_rays_are_kept_only_where_no_cosmic_ray_is_near():
    """calibrate_frame fills the bad pixels once for cosmic-ray detection and keeps those fills
    where no cosmic ray lies in their window: the result equals one fill made afterwards."""
    from darkroom.calib.interp import neighbour_fill
    from darkroom.calib.process import _fill

    rng = np.random.default_rng(7)
    shape = (120, 150)
    sci = rng.normal(500.0, 20.0, shape).astype(np.float32)
    var = rng.uniform(300.0, 500.0, shape).astype(np.float32)
    bad = rng.random(shape) < 0.01
    bad[40:52, 60:75] = True  # a block: its core needs wider windows
    bad[:, 3] = True  # a column at the edge
    cr = (rng.random(shape) < 0.004) & ~bad
    cr[39, 60] = cr[60, 4] = True  # next to the block and to the column
    unusable, fill = bad | cr, bad | cr
    first = neighbour_fill([sci, var], bad, np.flatnonzero(bad), check_finite=False)
    want_sci, want_var = sci.copy(), var.copy()
    want = interpolate_masked([want_sci, want_var], unusable, fill=fill, copy=False, check_finite=False)
    got = _fill(sci, var, unusable, fill, first, cr)
    assert np.array_equal(got, want)
    assert np.array_equal(sci, want_sci) and np.array_equal(var, want_var)


def test_a_fill_plan_gives_the_fill_of_any_image_bit_for_bit():
    """The first fill of a night's frames reuses the geometry of its unusable pixels
    (fill_plan): the same values, radii and order as a fill made from scratch."""
    from darkroom.calib.interp import fill_plan, neighbour_fill, planned_fill

    rng = np.random.default_rng(9)
    shape = (90, 110)
    bad = rng.random(shape) < 0.02
    bad[30:42, 50:60] = True  # a block: its core needs wider windows
    bad[:, 0] = bad[-1, :] = True  # a column and a row at the edges
    targets = np.flatnonzero(bad)
    plan = fill_plan(bad, targets, radius_pix=2)
    for _ in range(3):  # one plan, several frames
        sci = rng.normal(500.0, 20.0, shape).astype(np.float32)
        var = rng.uniform(300.0, 500.0, shape).astype(np.float32)
        want = neighbour_fill([sci, var], bad, targets, radius_pix=2, check_finite=False)
        got = planned_fill([sci, var], plan)
        assert np.array_equal(got.targets, want.targets) and np.array_equal(got.radius, want.radius)
        for g, w in zip(got.values, want.values, strict=True):
            assert g.dtype == w.dtype and np.array_equal(g, w)
    assert len(plan.rounds) > 1  # the block's core


@pytest.mark.parametrize("ny", [1, 31, 70])
@pytest.mark.parametrize("with_flat_variance", [True, False])
def test_dividing_by_the_flat_by_rows_is_the_whole_frame_division(ny, with_flat_variance):
    from darkroom.calib.variance import divide_by_flat, flat_divided_variance

    rng = np.random.default_rng(ny)
    sci = rng.normal(300.0, 50.0, (ny, 45)).astype(np.float32)
    sci[0, 0] = np.nan
    var = rng.uniform(100.0, 400.0, sci.shape).astype(np.float32)
    flat = rng.uniform(0.8, 1.2, sci.shape).astype(np.float32)
    fv = rng.uniform(1e-6, 1e-5, sci.shape).astype(np.float32) if with_flat_variance else None
    want_sci, want_var = sci.copy(), var.copy()
    want_sci /= flat
    flat_divided_variance(want_var, want_sci, flat, fv, out=want_var, flat_square=np.square(flat))
    divide_by_flat(sci, var, flat, fv, np.square(flat))
    assert np.array_equal(sci, want_sci, equal_nan=True) and np.array_equal(var, want_var, equal_nan=True)


def test_trimmed_shape_is_prepare_raws_without_the_pixels(synth):
    from darkroom.calib.process import trimmed_shape

    raw, meta = synth[5], _meta("light", 60.0)
    assert trimmed_shape(raw.shape, meta) == prepare_raw(raw, meta).data.shape
    untrimmed = CalibrationConfig(do_trim=False)
    assert (
        trimmed_shape(raw.shape, meta, config=untrimmed)
        == prepare_raw(raw, meta, config=untrimmed).data.shape
    )
    with pytest.raises(BadInputError):
        trimmed_shape((3, 4, 5), meta)


def test_flat_planes_are_made_once_per_master_and_the_cache_is_bounded(synth, monkeypatch):
    from darkroom.calib import process

    mf = synth[3]
    first = process._flat_planes(mf, 0.05)
    assert process._flat_planes(mf, 0.05) is first  # the same master: not made again
    assert process._flat_planes(mf, 0.5) is not first  # another threshold
    np.testing.assert_array_equal(first.square, np.square(first.data))
    monkeypatch.setattr(process, "_FLAT_CACHE_BYTES", first.nbytes)  # room for one
    other = mf.with_name("other.fits")
    process._flat_planes(other, 0.05)
    assert process._cache_bytes() <= max(first.nbytes, process._flat_planes(other, 0.05).nbytes)
    assert len(process._flat_cache) == 1
