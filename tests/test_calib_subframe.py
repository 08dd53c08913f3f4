"""Subframe read-outs (issue 10, item 13): a 400 x 300 cut of an ARCSAT light, its offset written
as MaxIm does (XORGSUBF/YORGSUBF, binned pixels), calibrates with the full-frame masters to the
same pixels as the full frame's calibrated cut, with the WCS shifted accordingly."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from darkroom.calib.grouping import MasterRecord, select_master
from darkroom.calib.masters import make_master_bias, make_master_dark, make_master_flat
from darkroom.calib.process import CalibrationConfig, calibrate_frame, cut_masters_to_subframe, prepare_raw
from darkroom.errors import MissingCalibrationError
from darkroom.instruments import normalize
from darkroom.io.rawfits import read_raw

X0, Y0, NX, NY = 317, 421, 400, 300


def _frames(arcsat_dir, pattern, n=3):
    out = []
    for path in sorted(arcsat_dir.glob(pattern))[:n]:
        raw = read_raw(path)
        meta = normalize(raw.header, filename=path.name, shape=raw.shape)
        out.append((raw, meta))
    return out


@pytest.fixture(scope="module")
def masters(arcsat_dir):
    cfg = CalibrationConfig()
    prep = lambda items: [prepare_raw(r.data, m, config=cfg).data for r, m in items]  # noqa: E731
    biases = _frames(arcsat_dir, "Bias_*.fits.gz")
    darks = _frames(arcsat_dir, "Dark_*.fits.gz")
    flats = _frames(arcsat_dir, "domeflat_z_*.fits.gz")
    bias = make_master_bias(prep(biases))
    dark = make_master_dark(prep(darks), exptime_s=[m.exptime_s for _, m in darks], bias=bias)
    flat = make_master_flat(
        prep(flats), bias=bias, dark=dark, exptime_s=[m.exptime_s for _, m in flats], filter="z"
    )
    return bias.with_name("bias.fits"), dark.with_name("dark.fits"), flat.with_name("flat.fits")


def _subframe(raw, header_in, style: str = "maxim") -> tuple[np.ndarray, fits.Header]:
    """The cut as a camera writes a subframe read-out: its offset keywords (MaxIm's XORGSUBF,
    NOAO's DETSEC or IRAF's LTV) and the WCS of the cut."""
    h = header_in.copy()
    if style == "maxim":
        h["XORGSUBF"] = (X0, "Subframe X position in binned pixels")
        h["YORGSUBF"] = (Y0, "Subframe Y position in binned pixels")
    else:
        del h["XORGSUBF"], h["YORGSUBF"]
        if style == "detsec":
            h["DETSEC"] = (f"[{X0 + 1}:{X0 + NX},{Y0 + 1}:{Y0 + NY}]", "detector section (1-based)")
        else:
            h["LTV1"], h["LTV2"] = float(-X0), float(-Y0)
    h["NAXIS1"], h["NAXIS2"] = NX, NY
    for key, d in (("CRPIX1", X0), ("CRPIX2", Y0)):
        if key in h:
            h[key] = h[key] - d
    return np.ascontiguousarray(raw.data[Y0 : Y0 + NY, X0 : X0 + NX]), h


@pytest.mark.parametrize("style", ["maxim", "detsec", "ltv"])
def test_subframe_calibrates_like_the_full_frame_cut(arcsat_dir, masters, style):
    bias, dark, flat = masters
    raw, meta = _frames(arcsat_dir, "XO1-b_z_*.fits.gz", n=1)[0]
    # cosmic rays off: their sky model is a mesh over the whole frame, which a cut cannot share
    cfg = CalibrationConfig(do_cosmic_rays=False)
    full = calibrate_frame(
        raw.data,
        meta,
        bias=bias,
        dark=dark,
        flat=flat,
        header=raw.header,
        gain_e_per_adu=1.5,
        read_noise_e=8.0,
        config=cfg,
    )
    data, header = _subframe(raw, raw.header, style)
    sub_meta = normalize(header, filename="XO1-b_z_sub.fits", shape=data.shape)
    assert (sub_meta.subframe_x, sub_meta.subframe_y) == (X0, Y0)
    assert (sub_meta.naxis1, sub_meta.naxis2) == (NX, NY)
    # the full-frame masters are chosen for the subframe (same camera and binning, covering it)
    rec = MasterRecord(
        name="b1",
        kind="bias",
        instrument=meta.instrument,
        binning_x=1,
        binning_y=1,
        naxis1=meta.naxis1,
        naxis2=meta.naxis2,
    )
    assert select_master(sub_meta, "bias", [rec]).name == "b1"
    with pytest.raises(MissingCalibrationError):
        select_master(sub_meta.model_copy(update={"subframe_x": None, "subframe_y": None}), "bias", [rec])
    b, d, f, _ = cut_masters_to_subframe(sub_meta, data.shape, bias=bias, dark=dark, flat=flat)
    assert b.data.shape == (NY, NX) and "[318:717,422:721]" in b.name
    sub = calibrate_frame(
        data,
        sub_meta,
        bias=b,
        dark=d,
        flat=f,
        header=header,
        gain_e_per_adu=1.5,
        read_noise_e=8.0,
        config=cfg,
    )
    cut = (slice(Y0, Y0 + NY), slice(X0, X0 + NX))
    assert np.array_equal(sub.mask, full.mask[cut])
    np.testing.assert_allclose(sub.sci, full.sci[cut], rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(sub.var, full.var[cut], rtol=1e-6, atol=1e-4)
    if style == "maxim":
        assert sub.header["XORGSUBF"] == X0 and sub.header["YORGSUBF"] == Y0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        w_full, w_sub = WCS(full.header, naxis=2), WCS(sub.header, naxis=2)
    ra1, de1 = w_full.all_pix2world([X0 + 10.0, X0 + 390.0], [Y0 + 5.0, Y0 + 290.0], 0)
    ra2, de2 = w_sub.all_pix2world([10.0, 390.0], [5.0, 290.0], 0)
    assert np.allclose(ra1, ra2, atol=1e-9) and np.allclose(de1, de2, atol=1e-9)


def test_a_full_frame_detector_section_is_not_a_subframe(arcsat_dir):
    raw, _ = _frames(arcsat_dir, "XO1-b_z_*.fits.gz", n=1)[0]
    h = raw.header.copy()
    del h["XORGSUBF"], h["YORGSUBF"]
    h["DETSEC"] = "[1:1024,1:1024]"
    meta = normalize(h, filename="full.fits", shape=raw.shape)
    assert (meta.subframe_x, meta.subframe_y) == (None, None)
    del h["DETSEC"]
    h["LTV1"], h["LTV2"], h["LTM1_1"] = -16.0, 0.0, 0.5  # scaled IRAF offsets: not read, and said so
    meta = normalize(h, filename="ltm.fits", shape=raw.shape)
    assert (meta.subframe_x, meta.subframe_y) == (None, None)
    assert any("LTV1/LTV2 ignored" in w for w in meta.warnings)
