"""Given a raw multi-extension file, the merged header is what setting each card in turn gives."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from darkroom.io.rawfits import _merged_header_by_key, read_raw


def _expected(path) -> fits.Header:
    """The image header over the primary's, one ``header[key] = (value, comment)`` at a time."""
    with fits.open(path) as hdul:
        items = [
            (c.keyword, c.value, c.comment)
            for h in (hdul[0].header, hdul[1].header)
            for c in h.cards
            if c.keyword not in ("", "COMMENT", "HISTORY")
        ]
    return _merged_header_by_key(items, [])


@pytest.mark.parametrize("hierarch", [False, True])
def test_repeated_keywords_update_their_first_card(tmp_path, hierarch):
    primary = fits.Header()
    primary["DATE-OBS"] = ("2025-06-02T04:10:08", "start")
    primary["EXPTIME"] = (30.0, "primary exposure")
    primary["FILTER"] = "z"
    primary.add_history("from the primary")
    if hierarch:
        primary["HIERARCH ESO DET CHIP"] = ("A", "a long keyword")
    image = fits.Header()
    image["EXPTIME"] = (31.5, "image exposure")  # overrides the primary's, in its place
    image["GAIN"] = (1.5, "e/adu")
    image.append(("FILTER", "i", "second FILTER card in one header"))
    image.append(("FILTER", "r", "third"))
    image.add_comment("a comment")
    path = tmp_path / "mef.fits"
    fits.HDUList(
        [fits.PrimaryHDU(header=primary), fits.ImageHDU(np.ones((8, 9), np.int16), header=image)]
    ).writeto(path)

    got = read_raw(path).header
    expected = _expected(path)
    assert got.tostring() == expected.tostring()
    assert list(got.items()) == list(expected.items())
    assert got["EXPTIME"] == 31.5 and got["FILTER"] == "r"
    assert list(got).index("EXPTIME") < list(got).index("GAIN")
    assert "HISTORY" not in got and "COMMENT" not in got
