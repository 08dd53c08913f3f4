"""The direct plane reader gives what astropy reads, or hands the file back to astropy."""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest
from astropy.io import fits

from darkroom.errors import BadInputError
from darkroom.io.calibrated import CalibratedImage, read_calibrated, write_calibrated
from darkroom.io.fitsplanes import read_planes


def _image(rng, *, mask_dtype=np.int32) -> CalibratedImage:
    sci = (300.0 + 10.0 * rng.standard_normal((37, 53))).astype(np.float32)
    sci[3, 4] = np.nan
    sci[5, 6] = -np.inf
    header = fits.Header()
    header["OBJECT"] = ("XO-1", "target")
    header["EXPTIME"] = 60.0
    header["FILTER"] = ("z'", "a quote inside")
    header.add_history("darkroom.calib: a history line")
    mask = rng.integers(0, 64, sci.shape).astype(mask_dtype)
    var = (sci / 1.5 + 36.0).astype(np.float32)
    return CalibratedImage(sci=sci, header=header, mask=mask, var=var)


def _astropy(path):
    with fits.open(path) as hdul:
        return {h.name: (None if h.data is None else h.data.copy()) for h in hdul[1:]}, hdul[
            "SCI"
        ].header.copy()


@pytest.mark.parametrize("mask_dtype", [np.int32, np.int16, np.uint8])
def test_planes_and_header_are_astropys(tmp_path, mask_dtype):
    image = _image(np.random.default_rng(1), mask_dtype=mask_dtype)
    path = tmp_path / "c.fits"
    write_calibrated(path, image)
    fast = read_planes(path, ("SCI", "MASK", "VAR"), header_of="SCI")
    assert fast is not None
    planes, header = fast
    want, want_header = _astropy(path)
    for name in ("SCI", "MASK", "VAR"):
        assert planes[name].dtype.isnative
        assert planes[name].dtype == want[name].dtype.newbyteorder("=")
        np.testing.assert_array_equal(planes[name], want[name])
    assert header == want_header
    assert header["FILTER"] == "z'"
    mapped, none = read_planes(path, ("SCI", "MASK", "VAR"), mapped=True)
    assert none is None
    for name in ("SCI", "MASK", "VAR"):  # views of the file, big-endian as stored
        assert not mapped[name].flags.writeable
        assert mapped[name].dtype == want[name].dtype.newbyteorder(">")
        np.testing.assert_array_equal(mapped[name], want[name])
    del mapped
    back = read_calibrated(path, planes=("SCI", "VAR"))
    assert back.mask is None
    np.testing.assert_array_equal(back.var, image.var)


def test_scaled_compressed_and_truncated_files_go_to_astropy(tmp_path):
    image = _image(np.random.default_rng(2), mask_dtype=np.uint16)
    # values beyond a byte stay uint16, which astropy writes with BZERO = 32768
    image = CalibratedImage(sci=image.sci, header=image.header, mask=image.mask + 40000, var=image.var)
    path = tmp_path / "u16.fits"
    write_calibrated(path, image)
    assert read_planes(path, ("MASK",)) is None
    back = read_calibrated(path)
    assert back.mask.dtype == np.uint16
    np.testing.assert_array_equal(back.mask, image.mask)

    plain = tmp_path / "plain.fits"
    write_calibrated(plain, _image(np.random.default_rng(3)))
    packed = tmp_path / "plain.fits.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_planes(packed, ("SCI",)) is None
    np.testing.assert_array_equal(read_calibrated(packed).sci, read_calibrated(plain).sci)

    cut = tmp_path / "cut.fits"
    cut.write_bytes(plain.read_bytes()[:-5000])
    assert read_planes(cut, ("SCI", "MASK", "VAR")) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BadInputError, match="cannot read calibrated image"):
            read_calibrated(cut)


def test_a_file_without_sci_is_a_bad_input(tmp_path):
    path = tmp_path / "nosci.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((4, 5), np.float32), name="OTHER")]).writeto(path)
    assert read_planes(path, ("SCI",), header_of="SCI") == ({}, None)
    with pytest.raises(BadInputError, match="cannot read calibrated image"):
        read_calibrated(path)
