"""Light-curve tables carry units (ECSV keeps them) and an uncalibrated mag says it is instrumental."""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from darkroom.timeseries import read_lightcurve, write_lightcurve
from darkroom.timeseries.field import assemble_lightcurve
from darkroom.timeseries.settings import LightCurveSettings


def test_units_survive_ecsv_and_instrumental_mag_is_named(tmp_path):
    rng = np.random.default_rng(5)
    n_img, n_src = 10, 6
    flux = np.geomspace(1e5, 1e4, n_src)[None, :] * (1 + 0.002 * rng.standard_normal((n_img, n_src)))
    img, src = np.meshgrid(np.arange(n_img), np.arange(n_src), indexing="ij")
    meas = Table(
        {
            "image_id": img.ravel(),
            "source_id": src.ravel(),
            "flux": flux.ravel(),
            "flux_err": np.sqrt(flux.ravel()),
            "flags": np.zeros(flux.size, np.int64),
            "mjd_utc": 60000.0 + img.ravel() / 1440.0,
            "filter": np.full(flux.size, "r"),
            "x": np.full(flux.size, 5.0),
            "y": np.full(flux.size, 6.0),
        }
    )
    for name, unit in (("flux", "adu"), ("flux_err", "adu"), ("x", "pix"), ("y", "pix"), ("mjd_utc", "d")):
        meas[name].unit = unit
    frames = Table(
        {
            "image_id": np.arange(n_img),
            "mjd_utc": 60000.0 + np.arange(n_img) / 1440.0,
            "filter": np.full(n_img, "r"),
            "fwhm": np.full(n_img, 3.0),
            "zp": np.full(n_img, np.nan),  # no photometric calibration
            "poor": np.zeros(n_img, bool),
        }
    )
    lc = assemble_lightcurve(
        meas, frames, target_id=0, ra_deg=150.0, dec_deg=2.0, location=None, settings=LightCurveSettings()
    )
    back = read_lightcurve(write_lightcurve(lc, tmp_path / "lc.ecsv"))
    for name, unit in (("flux", "adu"), ("x", "pix"), ("y", "pix"), ("fwhm", "pix"), ("ens_flux", "adu")):
        assert str(back[name].unit) == unit, name
    assert "instrumental" in back["mag"].description and back.meta["mag_system"] == "instrumental"
