"""`darkroom resample`, `darkroom arith` and `darkroom rgb` on small simulated files."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image as PILImage
from typer.testing import CliRunner

from darkroom.cli import app
from darkroom.imaging import grid_from_centre, planes_to_hdus, read_planes
from darkroom.sim import render_stars

SHAPE = (120, 140)


def _write(path, *, rotation: float, shift: float, flux_scale: float, seed: int):
    grid = grid_from_centre(
        210.0 + shift / 3600, 54.0, pixel_scale_arcsec=1.0, shape=SHAPE, rotation_deg=rotation
    )
    rng = np.random.default_rng(seed)
    img = np.full(SHAPE, 50.0)
    ra = 210.0 + np.array([-30.0, 0.0, 25.0, -10.0, 35.0]) / 3600 / np.cos(np.radians(54.0))
    dec = 54.0 + np.array([-20.0, 5.0, 30.0, 25.0, -25.0]) / 3600
    x, y = grid.wcs.all_world2pix(ra, dec, 0)
    render_stars(img, x, y, flux_scale * np.array([2e4, 5e4, 3e4, 1e4, 4e4]), 3.0)
    sci = img + rng.normal(0, 3.0, SHAPE)
    header = grid.header()
    header["EXPTIME"] = 30.0
    planes_to_hdus(sci, np.full(SHAPE, 9.0), np.zeros(SHAPE, np.int32), header).writeto(path)
    return path, (ra, dec)


def _centroid(plane: np.ndarray, x0: float, y0: float, half: int = 4) -> tuple[float, float]:
    ix, iy = round(x0), round(y0)
    box = np.nan_to_num(plane[iy - half : iy + half + 1, ix - half : ix + half + 1]).astype(float)
    box = np.clip(box - np.median(box), 0, None)
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    return ix + float((box * xx).sum() / box.sum()), iy + float((box * yy).sum() / box.sum())


@pytest.fixture
def files(tmp_path):
    a, radec = _write(tmp_path / "a.fits", rotation=0.0, shift=0.0, flux_scale=1.0, seed=1)
    b, _ = _write(tmp_path / "b.fits", rotation=12.0, shift=3.0, flux_scale=0.5, seed=2)
    c, _ = _write(tmp_path / "c.fits", rotation=-5.0, shift=-2.0, flux_scale=0.8, seed=3)
    return tmp_path, a, b, c, radec


def test_resample_onto_another_image_keeps_stars_in_place(files):
    tmp, a, b, _, radec = files
    out = tmp / "out"
    res = CliRunner().invoke(app, ["resample", str(b), "--like", str(a), "-o", str(out)])
    assert res.exit_code == 0, res.output
    moved = read_planes(out / "b.resampled.fits")
    assert moved.shape == SHAPE
    x, y = moved.wcs.all_world2pix(radec[0][1:2], radec[1][1:2], 0)
    cx, cy = _centroid(moved.sci, x[0], y[0])
    assert abs(cx - x[0]) < 0.2 and abs(cy - y[0]) < 0.2
    with fits.open(out / "b.resampled.fits") as hdul:
        assert "COVERAGE" in hdul


def test_arith_and_continuum_from_the_command_line(files):
    tmp, a, b, _, _ = files
    res = CliRunner().invoke(app, ["arith", str(a), "*", "2", "--err", "0.1", "-o", str(tmp / "x2.fits")])
    assert res.exit_code == 0, res.output
    doubled = read_planes(tmp / "x2.fits")
    assert np.allclose(doubled.sci, 2 * read_planes(a).sci)
    res = CliRunner().invoke(app, ["arith", str(b), "-", str(a), "--continuum", "-o", str(tmp / "c.fits")])
    assert res.exit_code == 0, res.output
    scale = float(res.output.split("continuum scale s = ")[1].split()[0])
    assert scale == pytest.approx(0.5, abs=0.01)  # b's stars are half as bright as a's
    bad = CliRunner().invoke(app, ["arith", str(a), "%", "2", "-o", str(tmp / "bad.fits")])
    assert bad.exit_code == 1 and "use one of" in bad.output


def test_rgb_png_tiff_and_fits_cube(files):
    tmp, a, b, c, radec = files
    png, cube = tmp / "rgb.png", tmp / "rgb.fits"
    res = CliRunner().invoke(
        app,
        ["rgb", "--red", str(c), "--green", str(a), "--blue", str(b), "-o", str(png), "--fits", str(cube)],
    )
    assert res.exit_code == 0, res.output
    pixels = np.asarray(PILImage.open(png))[::-1]
    assert pixels.shape == (*SHAPE, 3)
    with fits.open(cube) as hdul:
        assert hdul[0].data.shape == (3, *SHAPE)
    green = read_planes(a)
    x, y = green.wcs.all_world2pix(radec[0][1:2], radec[1][1:2], 0)
    for k in range(3):
        cx, cy = _centroid(pixels[:, :, k], x[0], y[0])
        assert abs(cx - x[0]) < 0.5 and abs(cy - y[0]) < 0.5
    missing = CliRunner().invoke(app, ["rgb", "--red", "nope.fits", "--green", str(a), "--blue", str(b)])
    assert missing.exit_code == 1 and "no such file" in missing.output


def test_coadd_is_an_optional_stage_of_run(tmp_path):
    from darkroom.config import DarkroomConfig
    from darkroom.pipeline.run import all_stages, coadd_family

    config = DarkroomConfig()
    names = [s.name for s in all_stages(tmp_path, config)]
    assert "coadd" not in names
    on = config.model_copy(update={"coadd": config.coadd.model_copy(update={"enabled": True})})
    stages = all_stages(tmp_path, on)
    assert stages[-1].name == "coadd"
    # enabling it is not a change of the coadds themselves: same provenance either way
    assert stages[-1].provenance_id == coadd_family(tmp_path, config)[0].provenance_id
