"""Blind solving with astrometry.net (issue 10, item 12): local solve-field with the Debian
Tycho-2 index packages (installed by .ci/run), and nova.astrometry.net through astroquery against
a local stand-in server."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning

from darkroom.astrom.blind import (
    BlindConfig,
    blind_solve,
    index_files,
    indexes_for_field,
    solve_field_available,
    solve_with_nova,
)
from darkroom.detect import extract_frame
from darkroom.errors import SolveError


def _wcs(header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, naxis=2)


def _offsets_arcsec(a: WCS, b: WCS, x, y) -> np.ndarray:
    ra1, de1 = a.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    ra2, de2 = b.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    return np.hypot((ra1 - ra2) * np.cos(np.radians(de1)), de1 - de2) * 3600.0


def _max_offset_arcsec(a: WCS, b: WCS, shape) -> float:
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 5), np.linspace(0, ny - 1, 5))
    return float(_offsets_arcsec(a, b, gx.ravel(), gy.ravel()).max())


def _thumbnail(data_dir):
    path = data_dir / "feder-eyuma-astrometry-photcal" / "thumbnail-image.fit.gz"
    with gzip.open(path) as fh, fits.open(fh) as hdul:
        return np.asarray(hdul[0].data, np.float32), hdul[0].header.copy()


def test_solve_field_is_installed():
    # .ci/run installs astrometry.net and astrometry-data-tycho2: blind solving must be tested in CI
    assert solve_field_available()
    scales = index_files()
    assert scales, "no Tycho-2 index files"
    chosen = indexes_for_field(scales, width_arcmin=38.4, height_arcmin=38.4)
    assert chosen and all(ix.quad_max_arcmin > 3.8 and ix.quad_min_arcmin < 54.4 for ix in chosen)
    assert len(chosen) < len(scales)


def test_feder_thumbnail_without_wcs_solves_blind(data_dir):
    data, header = _thumbnail(data_dir)
    truth = _wcs(
        fits.getheader(
            data_dir / "feder-eyuma-astrometry-photcal" / "wcs-sol-from-thumbnail-image-index-5200.fit"
        )
    )
    # the thumbnail's own header has no usable WCS and its pointing keywords are not used
    for key in ("OBJCTRA", "OBJCTDEC", "RA", "DEC", "CRVAL1", "CRVAL2"):
        header.remove(key, ignore_missing=True)
    cat = extract_frame(data).catalog
    sol = blind_solve(
        np.asarray(cat["x"]),
        np.asarray(cat["y"]),
        np.asarray(cat["flux_aper_adu"]),
        shape=data.shape,
        pixel_scale_arcsec=9.0,
    )
    assert sol.method.startswith("astrometry.net solve-field")
    assert "tycho2" in sol.method
    # compared where the stars are (the truth, fitted on Gaia-era stars, has SIP terms of ~2" in
    # the corners that the ~14 Tycho-2 stars of a 38' field cannot constrain; measured: median
    # 0.66", 95th percentile 1.6", largest 2.3" at one edge source)
    off = _offsets_arcsec(sol.wcs, truth, cat["x"], cat["y"])
    assert np.median(off) < 1.0 and np.percentile(off, 95) < 2.0, (np.median(off), np.percentile(off, 95))


@pytest.mark.slow
def test_simulated_two_degree_field_from_the_index_stars(tmp_path):
    """A 2-degree field rendered from Tycho-2 stars dumped from the index itself solves to its truth."""
    ra0, dec0, scale, n = 150.0, 30.0, 12.0, 600  # 600 px x 12"/px = 2 deg
    index = next(
        ix
        for ix in index_files()
        if ix.quad_min_arcmin <= 60 < ix.quad_max_arcmin or "tycho2-10" in ix.path.name
    )
    out = tmp_path / "stars.rdls"
    subprocess.run(
        [
            shutil.which("query-starkd"),
            "-r",
            str(ra0),
            "-d",
            str(dec0),
            "-R",
            "1.6",
            "-T",
            "-o",
            str(out),
            str(index.path),
        ],
        check=True,
        capture_output=True,
    )
    stars = Table.read(out)
    truth = WCS(naxis=2)
    truth.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    truth.wcs.crval = [ra0, dec0]
    truth.wcs.crpix = [n / 2 + 0.5, n / 2 + 0.5]
    c, s = np.cos(np.radians(25.0)), np.sin(np.radians(25.0))
    truth.wcs.cd = scale / 3600.0 * np.array([[-c, s], [s, c]])
    x, y = truth.all_world2pix(np.asarray(stars["RA"], float), np.asarray(stars["DEC"], float), 0)
    mag = np.asarray(stars["MAG"], float) if "MAG" in stars.colnames else np.full(len(x), 10.0)
    inside = (x > 2) & (x < n - 3) & (y > 2) & (y < n - 3)
    assert inside.sum() >= 20, inside.sum()
    rng = np.random.default_rng(3)
    img = rng.normal(100.0, 5.0, (n, n)).astype(np.float32)
    yy, xx = np.mgrid[0:n, 0:n]
    sigma = 2.2 / 2.3548
    for xi, yi, mi in zip(x[inside], y[inside], mag[inside], strict=True):
        flux = 2e5 * 10 ** (-0.4 * (mi - 9.0))
        sl = (slice(int(yi) - 6, int(yi) + 7), slice(int(xi) - 6, int(xi) + 7))
        img[sl] += (
            flux
            / (2 * np.pi * sigma**2)
            * np.exp(-((xx[sl] - xi) ** 2 + (yy[sl] - yi) ** 2) / (2 * sigma**2))
        )
    cat = extract_frame(img).catalog
    sol = blind_solve(
        np.asarray(cat["x"]),
        np.asarray(cat["y"]),
        np.asarray(cat["flux_aper_adu"]),
        shape=img.shape,
        pixel_scale_arcsec=scale,
    )
    assert sol.method.startswith("astrometry.net solve-field")
    off = _max_offset_arcsec(sol.wcs, truth, img.shape)
    assert off < 2.0, off


def test_nothing_to_solve_is_one_line():
    with pytest.raises(SolveError, match="at least 4"):
        blind_solve(np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0, 6.0]), shape=(100, 100))
    with pytest.raises(SolveError, match="off"):
        blind_solve(
            np.arange(10.0), np.arange(10.0), np.ones(10), shape=(100, 100), config=BlindConfig(engine="none")
        )


def test_nova_through_a_local_stand_in(httpserver, data_dir):
    """The nova.astrometry.net protocol (login, url_upload, submission, job, wcs_file) as astroquery
    speaks it, served locally; the service's answer is the known Feder thumbnail solution."""
    sol_path = data_dir / "feder-eyuma-astrometry-photcal" / "wcs-sol-from-thumbnail-image-index-5200.fit"
    header = fits.getheader(sol_path)
    seen: dict[str, object] = {}

    def login(request):
        from werkzeug import Response

        seen["login"] = json.loads(request.form["request-json"])
        return Response(json.dumps({"status": "success", "session": "s1"}), content_type="application/json")

    def upload(request):
        from werkzeug import Response

        seen["upload"] = json.loads(request.form["request-json"])
        return Response(json.dumps({"status": "success", "subid": 7}), content_type="application/json")

    httpserver.expect_request("/api/login", method="POST").respond_with_handler(login)
    httpserver.expect_request("/api/url_upload", method="POST").respond_with_handler(upload)
    httpserver.expect_request("/api/submissions/7").respond_with_json({"jobs": [11]})
    httpserver.expect_request("/api/jobs/11/info").respond_with_json({"status": "success"})
    httpserver.expect_request("/wcs_file/11").respond_with_data(header.tostring(), content_type="text/plain")
    data, _ = _thumbnail(data_dir)
    cat = extract_frame(data).catalog
    cfg = BlindConfig(
        engine="nova",
        nova_api_key="KEY123",
        nova_api_url=httpserver.url_for("/").rstrip("/"),
        nova_timeout_s=30,
    )
    sol = solve_with_nova(
        np.asarray(cat["x"]),
        np.asarray(cat["y"]),
        np.asarray(cat["flux_aper_adu"]),
        shape=data.shape,
        pixel_scale_arcsec=9.0,
        config=cfg,
    )
    assert sol.method == "nova.astrometry.net"
    assert seen["login"] == {"apikey": "KEY123"}
    up = seen["upload"]
    assert up["image_width"] == 256 and up["image_height"] == 256 and up["session"] == "s1"
    assert 9.0 * 0.7 - 1e-6 <= up["scale_lower"] < up["scale_upper"] <= 9.0 * 1.3 + 1e-6
    # positions are sent 1-based
    assert min(up["x"]) >= 1.0 - 1e-9
    assert _max_offset_arcsec(sol.wcs, _wcs(header), data.shape) < 1e-6
    from astroquery.astrometry_net import conf

    assert conf.api_key != "KEY123"  # the key is not left in astroquery's global configuration
