"""Colour (Bayer) frames (issue 10, item 9): read as the 2 x 2 luminance sum, the header rewritten
so that the camera reads as 2 x 2 binned (pixel scale, WCS, saturation), flux conserved."""

from __future__ import annotations

import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from darkroom.detect import extract_frame
from darkroom.instruments import normalize
from darkroom.io.bayer import bayer_pattern
from darkroom.io.rawfits import read_raw


def _bayer_file(tmp_path, pattern="RGGB"):
    ny, nx = 200, 240
    yy, xx = np.mgrid[0:ny, 0:nx]
    sky = np.full((ny, nx), 300.0)
    stars = [(60.3, 50.7, 4e4), (170.2, 120.4, 2e4), (100.8, 160.1, 3e4)]
    for x0, y0, flux in stars:
        s = 2.5
        sky += flux / (2 * np.pi * s * s) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s))
    # colour response of the mosaic: R 0.6, G 1.0, B 0.8 (RGGB: R at even row, even column)
    resp = np.ones((ny, nx))
    resp[0::2, 0::2], resp[1::2, 1::2] = 0.6, 0.8
    raw = np.round(sky * resp).astype(np.uint16)
    h = fits.Header()
    h.update(
        IMAGETYP="Light Frame",
        EXPTIME=30.0,
        BAYERPAT=pattern,
        XBINNING=1,
        YBINNING=1,
        XPIXSZ=4.3,
        YPIXSZ=4.3,
        FOCALLEN=430.0,
        RDNOISE=3.0,
        EGAIN=1.0,
    )
    h["DATE-OBS"] = "2025-03-01T03:00:00"
    h.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0, CRVAL2=20.0, CRPIX1=120.5, CRPIX2=100.5)
    h.update(CD1_1=-2.0 / 3600, CD1_2=0.0, CD2_1=0.0, CD2_2=2.0 / 3600)
    path = tmp_path / "dslr.fits"
    fits.PrimaryHDU(raw, header=h).writeto(path)
    return path, raw, stars, h


def test_bayer_frame_reads_as_luminance(tmp_path):
    path, raw, stars, h0 = _bayer_file(tmp_path)
    assert bayer_pattern(h0) == "RGGB"
    img = read_raw(path)
    assert img.shape == (100, 120) and img.data.shape == (100, 120)
    assert img.header["DEBAYER"] == "RGGB" and "BAYERPAT" not in img.header
    # flux conserved: the luminance frame sums the mosaic
    assert np.isclose(img.data.sum(), raw.astype(float).sum(), rtol=1e-6)
    meta = normalize(img.header, filename=path.name, shape=img.shape)
    assert (meta.binning_x, meta.binning_y) == (2, 2)
    assert meta.pixel_scale_arcsec is not None and abs(meta.pixel_scale_arcsec - 4.0) < 0.05
    assert meta.read_noise_e == 6.0 and meta.saturation_adu == 4 * 65535
    # header-only reading (ingest's inspect path) agrees
    assert read_raw(path, with_data=False).shape == (100, 120)
    # the rewritten WCS puts each star where the mosaic's WCS put it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        w_raw, w_lum = WCS(h0, naxis=2), WCS(img.header, naxis=2)
    cat = extract_frame(img.data).catalog
    for x0, y0, _ in stars:
        ra, dec = w_raw.all_pix2world([x0], [y0], 0)
        x, y = w_lum.all_world2pix(ra, dec, 0)
        d = np.hypot(np.asarray(cat["x"]) - x[0], np.asarray(cat["y"]) - y[0])
        assert d.min() < 0.3, d.min()


def test_mono_frames_are_untouched(tmp_path):
    path, raw, _, _ = _bayer_file(tmp_path, pattern="MONO")
    img = read_raw(path)
    assert img.shape == raw.shape and "DEBAYER" not in img.header
