"""Given a calibrated-image file, rewriting one header swaps only its blocks."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from darkroom.errors import BadInputError
from darkroom.io.atomic import sha256_file
from darkroom.io.fitsheader import read_headers, rewrite_header, scan_hdus


def _calibrated(path, n_cards: int = 20):
    rng = np.random.default_rng(1)
    sci_h = fits.Header()
    sci_h["EXTNAME"] = "SCI"
    for k in range(n_cards):
        sci_h[f"KEY{k}"] = (k, "a card")
    sci_h["CRPIX1"] = 10.0
    hdus = fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(rng.normal(size=(50, 70)).astype(np.float32), header=sci_h),
            fits.ImageHDU(rng.integers(0, 4, size=(50, 70)).astype(np.uint16), name="MASK"),
            fits.ImageHDU(rng.random((50, 70)).astype(np.float32), name="VAR"),
        ]
    )
    hdus.writeto(path)
    return hdus


@pytest.mark.parametrize("n_new", [3, 200])  # the header stays in its blocks / grows by blocks
def test_rewritten_header_equals_what_astropy_writes(tmp_path, n_new):
    path = tmp_path / "cal.fits"
    _calibrated(path)

    def update(h: fits.Header) -> None:
        h.remove("CRPIX1")
        for k in range(n_new):
            h[f"NEW{k}"] = (k * 0.5, "added")
        h.add_history("rewritten")

    given = fits.Header()
    given["CRPIX1"] = 10.0
    given["EXTNAME"] = "GIVENWCS"
    sha = rewrite_header(path, "SCI", update, append=[given])

    # the same change made through astropy's own reader and writer
    expected = tmp_path / "expected.fits"
    with fits.open(path) as done:
        assert [h.name for h in done] == ["PRIMARY", "SCI", "MASK", "VAR", "GIVENWCS"]
        done.verify("exception")
    original = tmp_path / "orig.fits"
    hdul = _calibrated(original)
    update(hdul["SCI"].header)
    hdul.append(fits.ImageHDU(header=given))
    hdul.writeto(expected)
    assert path.read_bytes() == expected.read_bytes()
    assert sha == sha256_file(path)
    with fits.open(path) as h:
        assert h["SCI"].header["NEW1"] == 0.5 and "CRPIX1" not in h["SCI"].header
        np.testing.assert_array_equal(h["VAR"].data, fits.getdata(original, "VAR"))


def test_layout_change_and_missing_extension_are_refused(tmp_path):
    path = tmp_path / "cal.fits"
    _calibrated(path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="NAXIS1"):
        rewrite_header(path, "SCI", lambda h: h.set("NAXIS1", 71))
    with pytest.raises(BadInputError, match=r"cal\.fits"):
        rewrite_header(path, "NOPE", lambda h: None)
    assert path.read_bytes() == before  # nothing written on refusal


def test_read_headers_equal_astropys_and_skip_missing(tmp_path):
    path = tmp_path / "cal.fits"
    _calibrated(path, n_cards=60)  # the SCI header spans two blocks
    got = read_headers(path, ("SCI", "VAR", "GIVENWCS", 0))
    assert set(got) == {"SCI", "VAR", 0}
    with fits.open(path) as hdul:
        for name in ("SCI", "VAR", 0):
            assert got[name].tostring() == hdul[name].header.tostring()
            assert list(got[name].items()) == list(hdul[name].header.items())


@pytest.mark.filterwarnings("ignore:Unexpected extra padding")
def test_a_file_the_scan_does_not_place_goes_through_astropy(tmp_path):
    path = tmp_path / "cal.fits"
    _calibrated(path)
    assert scan_hdus(path.read_bytes()) is not None
    with open(path, "ab") as fh:  # stray bytes after the last HDU: astropy ignores them
        fh.write(b"\0" * 100)
    assert scan_hdus(path.read_bytes()) is None
    with fits.open(path) as hdul:
        expected = hdul["SCI"].header.tostring()
    assert read_headers(path, ("SCI",))["SCI"].tostring() == expected
    sha = rewrite_header(path, "SCI", lambda h: h.set("NEW", 1))
    assert sha == sha256_file(path)
    with fits.open(path) as hdul:
        assert hdul["SCI"].header["NEW"] == 1


def test_first_present_name_is_rewritten_and_append_may_depend_on_the_file(tmp_path):
    path = tmp_path / "cal.fits"
    _calibrated(path)
    seen = []

    def given(header: fits.Header, names: list[str]) -> list[fits.Header]:
        seen.append((header["CRPIX1"], names))
        return [] if "GIVENWCS" in names else [fits.Header([("EXTNAME", "GIVENWCS")])]

    rewrite_header(path, ("NOPE", "SCI"), lambda h: h.set("CRPIX1", 11.0), append=given)
    rewrite_header(path, ("NOPE", "SCI"), lambda h: h.set("CRPIX1", 12.0), append=given)
    assert seen == [
        (10.0, ["PRIMARY", "SCI", "MASK", "VAR"]),
        (11.0, ["PRIMARY", "SCI", "MASK", "VAR", "GIVENWCS"]),
    ]
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCI", "MASK", "VAR", "GIVENWCS"]
        assert hdul["SCI"].header["CRPIX1"] == 12.0


def test_a_calibrated_image_takes_a_wcs_solution_in_place(tmp_path):
    """write_calibrated leaves room in SCI's header: a 60-card solution is written over the old
    header blocks (the planes are not copied: same inode), the frame's own WCS appended."""
    import os

    from darkroom.io.calibrated import CalibratedImage, read_calibrated, write_calibrated

    rng = np.random.default_rng(2)
    header = fits.Header([(f"KEY{k}", k) for k in range(30)] + [("CRPIX1", 10.0)])
    image = CalibratedImage(
        sci=rng.normal(size=(40, 60)).astype(np.float32),
        header=header,
        mask=np.zeros((40, 60), np.int32),
        var=np.ones((40, 60), np.float32),
    )
    path = tmp_path / "cal.fits"
    write_calibrated(path, image)
    inode, size = os.stat(path).st_ino, path.stat().st_size

    def update(h: fits.Header) -> None:
        for k in range(60):
            h[f"A_{k // 10}_{k % 10}"] = (k * 1e-7, "SIP")
        h.add_history("solved")

    given = fits.Header([("EXTNAME", "GIVENWCS"), ("CRPIX1", 10.0)])
    sha = rewrite_header(path, "SCI", update, append=[given])
    assert os.stat(path).st_ino == inode  # overwritten in place, not renamed over
    assert path.stat().st_size == size + 2880  # only the empty extension was added
    assert sha == sha256_file(path)
    with fits.open(path) as hdul:
        hdul.verify("exception")
        assert [h.name for h in hdul] == ["PRIMARY", "SCI", "MASK", "VAR", "GIVENWCS"]
        assert hdul["SCI"].header["A_5_9"] == pytest.approx(59e-7)
    back = read_calibrated(path)
    np.testing.assert_array_equal(back.sci, image.sci)
    np.testing.assert_array_equal(back.var, image.var)

    # fewer cards than blocks hold: blank cards before END keep the data where it was
    rewrite_header(path, "SCI", lambda h: [h.remove(f"A_{k // 10}_{k % 10}") for k in range(60)])
    assert os.stat(path).st_ino == inode and path.stat().st_size == size + 2880
    with fits.open(path) as hdul:
        hdul.verify("exception")
        assert "A_5_9" not in hdul["SCI"].header and hdul["SCI"].header["KEY29"] == 29
        np.testing.assert_array_equal(hdul["VAR"].data, image.var)
    rewrite_header(path, "SCI", update)

    # a solution too long for the room left: the whole file is written anew
    rewrite_header(path, "SCI", lambda h: [h.set(f"B_{k}", k) for k in range(100)])
    assert os.stat(path).st_ino != inode
    with fits.open(path) as hdul:
        assert hdul["SCI"].header["B_99"] == 99 and hdul["SCI"].header["A_5_9"] == pytest.approx(59e-7)
        np.testing.assert_array_equal(hdul["SCI"].data, image.sci)
