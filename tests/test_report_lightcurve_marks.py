"""The report's light-curve plot: excluded frames and predicted transit times are drawn."""

from __future__ import annotations

import io

import numpy as np
from astropy.table import Table
from matplotlib import image as mimage

from darkroom.report.model import TargetLightCurve
from darkroom.report.plots import lightcurve_png


def _pixels(png: bytes, rgb: tuple[float, float, float], tol: float = 0.06) -> int:
    img = mimage.imread(io.BytesIO(png))[..., :3]
    return int((np.abs(img - np.asarray(rgb)).max(axis=-1) < tol).sum())


def _reddish(png: bytes) -> int:
    img = mimage.imread(io.BytesIO(png))[..., :3]
    return int(((img[..., 0] > 0.75) & (img[..., 1] < 0.55) & (img[..., 2] < 0.55)).sum())


def _table() -> Table:
    t = 2460828.65 + np.arange(40) * 7.2 / 1440  # 04:36 to 09:17 UTC-ish: the whole transit
    rel = 1.0 - 0.017 * ((t > 2460828.677) & (t < 2460828.798))
    return Table(
        {"bjd_tdb": t, "mjd_utc": t - 2400000.5 - 0.0005, "rel_flux": rel, "rel_flux_err": np.full(40, 2e-3)}
    )


def test_excluded_frames_are_grey_crosses_and_contacts_red_lines():
    table = _table()
    plain = lightcurve_png(TargetLightCurve("XO1-b", table))
    excluded = tuple(float(x) for x in table["bjd_tdb"][:5] + 0.0004)
    marked = lightcurve_png(TargetLightCurve("XO1-b", table, excluded_times=excluded))
    grey = (0.55, 0.55, 0.55)
    assert _pixels(marked, grey) > _pixels(plain, grey) + 20
    contacts = {"ingress": 2460828.677, "mid": 2460828.7378, "egress": 2460828.798}
    with_contacts = lightcurve_png(
        TargetLightCurve("XO1-b", table, contacts=contacts, contacts_source="NASA Exoplanet Archive")
    )
    assert _reddish(with_contacts) > _reddish(plain) + 300  # three full-height lines


def test_conditions_panel_when_airmass_and_fwhm_are_known():
    table = _table()
    plain = mimage.imread(io.BytesIO(lightcurve_png(TargetLightCurve("XO1-b", table))))
    table["airmass"] = np.linspace(1.05, 1.6, len(table))
    table["fwhm"] = np.full(len(table), 2.7)
    three = mimage.imread(io.BytesIO(lightcurve_png(TargetLightCurve("XO1-b", table))))
    assert plain.shape[0] == 550 and three.shape[0] == 680  # a third panel: airmass, FWHM
