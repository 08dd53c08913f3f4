"""The calibrated-image writer: astropy's bytes, written directly, with the checksum of what was written."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits

from darkroom.io.atomic import sha256_file
from darkroom.io.calibrated import CalibratedImage, calibrated_hdus, read_calibrated, write_calibrated


def _image(rng, *, mask_dtype=np.int32, extra_cards=()) -> CalibratedImage:
    sci = (300.0 + 10.0 * rng.standard_normal((37, 53))).astype(np.float32)
    sci[3, 4] = np.nan
    header = fits.Header()
    header["OBJECT"] = ("XO-1", "target")
    header["EXPTIME"] = 60.0
    header["GAIN"] = (1.5, "[electron/adu] gain used for VAR")
    header["NOTE"] = ("x" * 60, "a comment too long for the card: truncated quietly " * 2)
    for key, value in extra_cards:
        header[key] = value
    header.add_history("darkroom.calib: a history line")
    mask = rng.integers(0, 4, sci.shape).astype(mask_dtype)
    var = (sci / 1.5 + 36.0).astype(np.float32)
    return CalibratedImage(sci=sci, header=header, mask=mask, var=var)


def _astropy_bytes(image: CalibratedImage, path) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        calibrated_hdus(image).writeto(path)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("mask_dtype", "extra_cards"),
    [
        (np.int32, ()),  # the direct path
        (np.uint16, ()),  # unsigned: astropy's writer (BZERO)
        (np.int32, (("CHECKSUM", "0000000000000000"), ("DATASUM", "0"))),  # recomputed by astropy
    ],
)
def test_written_bytes_are_astropys_and_the_checksum_is_the_files(tmp_path, mask_dtype, extra_cards):
    image = _image(np.random.default_rng(4), mask_dtype=mask_dtype, extra_cards=extra_cards)
    want = _astropy_bytes(image, tmp_path / "astropy.fits")
    sha = write_calibrated(tmp_path / "darkroom.fits", image)
    got = (tmp_path / "darkroom.fits").read_bytes()
    if "CHECKSUM" in dict(extra_cards):  # astropy stamps the write time into the checksum comment
        assert len(got) == len(want)
    else:
        assert got == want
    assert sha == sha256_file(tmp_path / "darkroom.fits")
    back = read_calibrated(tmp_path / "darkroom.fits")
    np.testing.assert_array_equal(back.sci, image.sci)
    np.testing.assert_array_equal(back.mask, image.mask)
    np.testing.assert_array_equal(back.var, image.var)
    assert back.header["OBJECT"] == "XO-1"
    bare = read_calibrated(tmp_path / "darkroom.fits", header=False)  # the same planes, no header parsed
    assert bare.header is None
    for plane in ("sci", "mask", "var"):
        got_plane, want_plane = getattr(bare, plane), getattr(back, plane)
        assert got_plane.dtype == want_plane.dtype
        np.testing.assert_array_equal(got_plane, want_plane)


def test_no_temporary_file_is_left_and_the_input_is_untouched(tmp_path):
    image = _image(np.random.default_rng(5))
    before = image.sci.copy(), image.mask.copy()
    write_calibrated(tmp_path / "a.fits", image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fits"]
    np.testing.assert_array_equal(image.sci, before[0])
    np.testing.assert_array_equal(image.mask, before[1])
    assert image.sci.dtype.byteorder in ("=", "<")


@pytest.mark.parametrize("n_blank", [0, 3, 72, 100])
def test_room_for_a_wcs_is_astropys_whatever_blank_cards_end_the_header(tmp_path, n_blank):
    """SCI's blank cards are added to its header bytes, the MASK/VAR/primary headers made once:
    the file is still astropy's, whether the header already ends in blank cards or not, and
    for planes of another shape or pixel type."""
    rng = np.random.default_rng(6)
    image = _image(rng)
    for _ in range(n_blank):
        image.header.append(fits.Card(), useblanks=False, bottom=True)
    before = [(c.keyword, c.value, c.comment) for c in image.header.cards]
    for k, plane_image in enumerate(
        (
            image,
            CalibratedImage(sci=image.sci[:20], header=image.header, mask=image.mask[:20].astype(np.int16)),
            CalibratedImage(sci=image.sci, header=image.header, var=image.var.astype(np.float64)),
        )
    ):
        want = _astropy_bytes(plane_image, tmp_path / f"astropy{k}.fits")
        write_calibrated(tmp_path / f"darkroom{k}.fits", plane_image)
        assert (tmp_path / f"darkroom{k}.fits").read_bytes() == want
    assert [
        (c.keyword, c.value, c.comment) for c in image.header.cards
    ] == before  # the caller's header is not changed


def test_an_invalid_card_fails_as_astropys_writer_does(tmp_path):
    image = _image(np.random.default_rng(7))
    image.header.append(fits.Card.fromstring("BAD KEY = 'x'"))
    with pytest.raises(fits.verify.VerifyError):
        write_calibrated(tmp_path / "darkroom.fits", image)
    assert not (tmp_path / "darkroom.fits").exists()


def test_sci_headers_of_every_shared_raw_file_are_astropys(tmp_path, data_dir):
    """SCI's header is written from its cards (no astropy HDU built): for the raw headers of
    every data set (as calibrate_frame passes them on: scaling cards removed, cards and history
    added) the file is byte for byte astropy's, and the direct path is taken for most."""
    from darkroom.io import calibrated
    from darkroom.io.rawfits import read_raw

    taken = []
    direct = calibrated._sci_header_direct
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and ".fit" in p.name.lower())
    assert len(files) > 50
    rng = np.random.default_rng(8)
    for k, path in enumerate(files):
        try:
            raw = read_raw(path)
        except Exception:  # not an image this reader takes: not this test's business
            continue
        header = raw.header.copy()
        for key in ("BZERO", "BSCALE", "BLANK", "DATAMIN", "DATAMAX"):
            header.remove(key, ignore_missing=True, remove_all=True)
        header["BUNIT"] = ("adu", "calibrated, bias/dark subtracted, flat divided")
        header["GAIN"] = (1.5, "[electron/adu] gain used for VAR")
        header.add_history("darkroom.calib: a history line")
        sci = rng.normal(100.0, 5.0, (13, 17 + k % 3)).astype(np.float32)
        image = CalibratedImage(sci=sci, header=header, mask=np.zeros(sci.shape, np.int32), var=sci)
        want = _astropy_bytes(image, tmp_path / f"astropy{k}.fits")
        taken.append(direct(image) is not None)
        write_calibrated(tmp_path / f"darkroom{k}.fits", image)
        assert (tmp_path / f"darkroom{k}.fits").read_bytes() == want, path.name
    assert sum(taken) > 0.8 * len(taken)


def _header_variant(kind: str) -> fits.Header:
    h = fits.Header()
    if kind == "commentary only":
        h.add_comment("a comment")
        h.add_history("a history line")
    elif kind == "structure twice":
        h["SIMPLE"] = True
        h["NAXIS"] = 2
        h["NAXIS1"] = 10
        h["NAXIS2"] = 12
        h.append(fits.Card("SIMPLE", True), bottom=True)
    elif kind == "stray NAXIS3":
        h["NAXIS"] = 2
        h["NAXIS3"] = 4
    elif kind == "long, hierarch and blank-keyword cards":
        h["OBJECT"] = "x" * 150  # CONTINUE cards
        h["HIERARCH ESO DET CHIP NAME"] = "chip"
        h.append(fits.Card("", "free text after a blank keyword"), bottom=True)
        h["EXPTIME"] = 30.0
        h.add_history("history")
        h.append(fits.Card("", "trailing text"), bottom=True)
    elif kind == "has EXTNAME":
        h["EXTNAME"] = ("RAW", "the raw extension")
        h["OBSERVER"] = "me"
    return h


@pytest.mark.parametrize(
    "kind",
    [
        "commentary only",
        "structure twice",
        "stray NAXIS3",
        "long, hierarch and blank-keyword cards",
        "has EXTNAME",
    ],
)
def test_unusual_sci_headers_are_written_as_astropy_writes_them(tmp_path, kind):
    sci = np.arange(12 * 10, dtype=np.float32).reshape(12, 10)
    image = CalibratedImage(sci=sci, header=_header_variant(kind), var=sci)
    try:
        want = _astropy_bytes(image, tmp_path / "astropy.fits")
    except fits.verify.VerifyError:
        with pytest.raises(fits.verify.VerifyError):
            write_calibrated(tmp_path / "darkroom.fits", image)
        return
    write_calibrated(tmp_path / "darkroom.fits", image)
    assert (tmp_path / "darkroom.fits").read_bytes() == want
