"""FITS sections, overscan subtraction and trim (SAAO frame with BIASSEC/TRIMSEC, synthetic known answers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from darkroom.calib.overscan import (
    OverscanConfig,
    format_section,
    parse_section,
    subtract_overscan,
    trim_image,
)
from darkroom.calib.process import prepare_raw
from darkroom.errors import BadInputError
from darkroom.instruments.metadata import FrameMetadata


def test_parse_section_is_one_based_inclusive():
    assert parse_section("[17:528,1:520]") == (slice(0, 520), slice(16, 528))
    assert parse_section("[  17: 528,   1: 520]") == (slice(0, 520), slice(16, 528))  # SAAO spacing
    assert parse_section("[528:17,520:1]") == (slice(0, 520), slice(16, 528))  # flipped readout
    assert parse_section("[1:1,1:1]") == (slice(0, 1), slice(0, 1))
    assert format_section(*parse_section("[4:13,1:520]")) == "[4:13,1:520]"
    a = np.arange(20).reshape(4, 5)
    np.testing.assert_array_equal(trim_image(a, "[2:3,4:4]"), [[16, 17]])  # x=2..3 (cols 1-2), y=4 (row 3)


@pytest.mark.parametrize("bad", ["4:13,1:520", "[0:13,1:520]", "[a:b,1:2]", "[1:2]"])
def test_parse_section_rejects_bad_strings(bad):
    with pytest.raises(BadInputError, match="section"):
        parse_section(bad)


def test_parse_section_checks_the_image_size():
    with pytest.raises(BadInputError, match="exceeds"):
        parse_section("[1:600,1:10]", shape=(520, 536))


def test_overscan_polynomial_recovers_a_known_gradient():
    rng = np.random.default_rng(3)
    ny, nx = 300, 220
    level = 1000 + 0.05 * np.arange(ny) + 2e-4 * (np.arange(ny) - 150) ** 2
    img = level[:, None] + 4.0 * rng.standard_normal((ny, nx))
    img[:, 20:] += 500.0  # the science area has signal, the overscan (cols 0-19) has none
    img[77, 5] += 3000.0  # a cosmic ray in the overscan
    res = subtract_overscan(img.astype(np.float32), "[1:20,1:300]", config=OverscanConfig(poly_order=3))
    assert res.axis == "rows"
    assert np.max(np.abs(res.level_adu - level)) < 0.8
    assert res.noise_adu == pytest.approx(4.0, rel=0.1)
    assert float(np.median(res.data[:, 20:])) == pytest.approx(500.0, abs=0.5)


def test_wide_overscan_strip_is_per_column():
    img = np.tile(np.linspace(100, 200, 50, dtype=np.float32), (40, 1))
    res = subtract_overscan(img, "[1:50,36:40]", config=OverscanConfig(fit="per_line"))
    assert res.axis == "columns"
    np.testing.assert_allclose(res.data, 0, atol=1e-4)


@pytest.fixture(scope="module")
def saao(data_dir: Path):
    with fits.open(data_dir / "ccdproc-saao-and-sip" / "a8280271.fits") as hdul:
        return hdul[0].data.astype(np.float32), hdul[0].header.copy()


def test_saao_overscan_and_trim_from_the_header(saao):
    data, header = saao
    meta = FrameMetadata(
        profile="test",
        frame_type="light",
        overscan_section=header["BIASSEC"],
        trim_section=header["TRIMSEC"],
        naxis1=header["NAXIS1"],
        naxis2=header["NAXIS2"],
    )
    prep = prepare_raw(data, meta)
    assert prep.data.shape == (520, 512)  # TRIMSEC [17:528,1:520]
    assert prep.offset == (0, 16)
    # BIASSEC [4:13,1:520] = 0-based columns 3-12: their median level is what was subtracted
    strip_level = float(np.median(data[:, 3:13]))
    assert prep.overscan_level_adu == pytest.approx(strip_level, abs=1.0)
    assert float(np.median(data[:, 16:528])) - strip_level == pytest.approx(
        float(np.median(prep.data)), abs=1.0
    )
    # the strip itself is flat after subtraction
    res = subtract_overscan(data, header["BIASSEC"])
    assert abs(float(np.median(res.data[:, 3:13]))) < 0.5
