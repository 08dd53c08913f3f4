"""Bad pixels: planted hot/dead pixels and bad columns/rows, the user YAML format, merging."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from darkroom.calib.badpix import (
    BadPixelConfig,
    BadPixelReason,
    bad_lines,
    build_bad_pixel_mask,
    hot_pixels,
    low_pixels,
    parse_user_badpixels,
    read_user_badpixels,
    user_badpixel_mask,
)
from darkroom.errors import BadInputError

SHAPE = (300, 280)


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(21)
    ny, nx = SHAPE
    yy, xx = np.mgrid[0:ny, 0:nx]
    # dark: a glow gradient + noise + 40 hot pixels + a hot column segment (rows 100-299 of column 70)
    dark = (5 + 0.02 * xx + 2.0 * rng.standard_normal(SHAPE)).astype(np.float32)
    hot_y, hot_x = rng.integers(5, ny - 5, 40), rng.integers(5, nx - 5, 40)
    dark[hot_y, hot_x] += rng.uniform(50, 5000, 40)
    dark[100:, 70] += 8.0
    # flat: vignetting + 0.5% noise + 25 dead pixels + a low column (col 200) + a low row (row 37)
    r2 = ((xx - nx / 2) ** 2 + (yy - ny / 2) ** 2) / (nx / 2) ** 2
    flat = ((1 - 0.3 * r2) * (1 + 0.005 * rng.standard_normal(SHAPE))).astype(np.float32)
    dead_y, dead_x = rng.integers(5, ny - 5, 25), rng.integers(5, nx - 5, 25)
    flat[dead_y, dead_x] *= 0.1
    flat[:, 200] *= 0.9
    flat[37, :] *= 0.93
    return dark, flat, (hot_y, hot_x), (dead_y, dead_x)


def test_hot_pixels_found(planted):
    dark, _, (hy, hx), _ = planted
    hot = hot_pixels(dark)
    assert hot[hy, hx].all()
    extra = hot.copy()
    extra[hy, hx] = False
    extra[:, 70] = False  # the +4 sigma hot column has a few pixels above 6 sigma
    assert extra.sum() <= 2  # noise alone gives (almost) nothing at 6 sigma


def test_dead_pixels_found(planted):
    _, flat, _, (dy, dx) = planted
    low, high = low_pixels(flat)
    assert low[dy, dx].all()
    assert low.sum() == len(set(zip(dy, dx, strict=True)))
    assert not high.any()


def test_bad_columns_and_rows_from_profiles(planted):
    dark, flat, _, _ = planted
    m, cols = bad_lines(flat, axis=0)
    assert cols == [200]
    assert m[:, 200].all()
    m, rows = bad_lines(flat, axis=1)
    assert rows == [37]
    # the hot column is bad from row 100 on: found in the stripes where it is bad only
    m, cols = bad_lines(dark, axis=0, config=BadPixelConfig(n_segments=3))
    assert cols == [70]
    assert m[100:, 70].all() and not m[:100, 70].any()


USER_YAML = """
# iTelescope t05, in the format of AstroPhotography's etc/user_badpixels.yml
---
bad_columns:
- 12
- 13
- [20, 22]   # a range
bad_rectangles:
- - 1
  - 1
  - 1
  - 1
- - 5   # rows 5-6, columns 7-12 (1-based, inclusive)
  - 6
  - 7
  - 12
bad_rows:
- 101
...
"""


def test_user_badpixels_are_one_based_inclusive(tmp_path: Path):
    user = parse_user_badpixels(USER_YAML)
    m = user_badpixel_mask(user, (120, 40))
    expected = np.zeros((120, 40), dtype=bool)
    expected[:, [11, 12, 19, 20, 21]] = True
    expected[0, 0] = True
    expected[4:6, 6:12] = True
    expected[100, :] = True
    np.testing.assert_array_equal(m, expected)
    p = tmp_path / "user_badpixels.yml"
    p.write_text(USER_YAML)
    assert read_user_badpixels(p) == user


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("bad_columns: [0]", "1-based"),
        ("bad_rectangles: [[1, 2, 3]]", "rectangle"),
        ("[1, 2", "YAML"),
        ("- 1", "mapping"),
        ("bad_cols: [1]", "bad_cols"),
    ],
)
def test_user_badpixels_errors(text, match):
    with pytest.raises(BadInputError, match=match):
        parse_user_badpixels(text)


def test_merged_mask_keeps_reasons(planted):
    dark, flat, (hy, hx), (dy, dx) = planted
    user = parse_user_badpixels("bad_rectangles: [[11, 20, 31, 40]]")
    bpm = build_bad_pixel_mask(SHAPE, dark=dark, dark_exptime_s=60.0, flat=flat, user=user)
    assert (bpm.reasons[hy, hx] & BadPixelReason.HOT).all()
    assert (bpm.reasons[dy, dx] & BadPixelReason.LOW).all()
    assert (bpm.reasons[:, 200] & BadPixelReason.COLUMN).all()
    assert (bpm.reasons[37, :] & BadPixelReason.ROW).all()
    assert (bpm.reasons[10:20, 30:40] & BadPixelReason.USER).all()
    assert 200 in bpm.bad_columns and 70 in bpm.bad_columns and 37 in bpm.bad_rows
    assert bpm.counts["total"] == bpm.n_bad == int(bpm.mask.sum())
    assert bpm.n_bad < 0.03 * dark.size
    assert bpm.with_name("bpm.fits").name == "bpm.fits"


def test_smooth_level_follows_a_plane_to_the_edges():
    from darkroom.calib.badpix import smooth_level

    yy, xx = np.mgrid[0:150, 0:130].astype(np.float32)
    plane = 10 + 0.3 * xx - 0.2 * yy  # blocks of 32: the last blocks are partial
    np.testing.assert_allclose(smooth_level(plane, box_pix=32), plane, atol=1e-3)
