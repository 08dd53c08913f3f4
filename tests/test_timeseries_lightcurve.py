"""build_lightcurve, quality flags, split, writers and the plot on a synthetic field."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table, vstack

from darkroom.errors import BadInputError
from darkroom.phot import PhotFlag
from darkroom.timeseries import (
    LightCurveConfig,
    LightCurveFlag,
    TransparencyConfig,
    bin_lightcurve,
    bjd_tdb,
    build_lightcurve,
    plot_lightcurve,
    read_lightcurve,
    site_location,
    split_lightcurve,
    transparency_flags,
    write_lightcurve,
)

SITE = site_location(32.78028, -105.82028, 2788.0)
RA, DEC = 240.549333, 28.169556
MJD0 = 60828.17  # 2025-06-02 04:05 UTC, XO-1 up at APO
DEPTH = 0.015


def _measurements(seed: int = 0, n_star: int = 25, n_ep: int = 120) -> Table:
    """Long table (image_id, source_id, flux, ...): target = source 100, two filters
    alternating, a cloud over epochs 40-45, target 1.5 % box transit between 0.05 and 0.10 d."""
    rng = np.random.default_rng(seed)
    dt = np.linspace(0, 0.15, n_ep)
    base = 10 ** rng.uniform(4.8, 5.6, n_star)
    base[0] = 2e5
    trans = 1 + np.cumsum(rng.normal(0, 0.003, n_ep))
    trans[40:46] *= 0.5
    rows = []
    for e in range(n_ep):
        band = "V" if e % 2 == 0 else "R"
        model = base * trans[e] * (1.3 if band == "R" else 1.0)
        if 0.05 < dt[e] < 0.10:
            model[0] *= 1 - DEPTH
        err = np.sqrt(model + 200.0**2)
        flux = model + rng.normal(0, 1, n_star) * err
        flags = np.zeros(n_star, np.int64)
        if e == 7:
            flags[0] = PhotFlag.CR
        rows.append(
            Table(
                {
                    "image_id": np.full(n_star, 1000 + e),
                    "source_id": np.arange(100, 100 + n_star),
                    "flux": flux,
                    "flux_err": err,
                    "mjd_utc": np.full(n_star, MJD0 + dt[e]),
                    "filter": np.full(n_star, band),
                    "flags": flags,
                    "fwhm": np.full(n_star, 2.6),
                    "x": 500.0 + np.arange(n_star) * 13.0,
                    "y": np.full(n_star, 400.0),
                }
            )
        )
    return vstack(rows)


def test_build_lightcurve_two_filters_with_site(tmp_path):
    meas = _measurements()
    lc = build_lightcurve(meas, target_id=100, ra_deg=RA, dec_deg=DEC, location=SITE)
    required = ["bjd_tdb", "mjd_utc", "filter", "flux", "flux_err", "mag", "mag_err", "rel_flux",
                "rel_flux_err", "airmass", "fwhm", "flags", "image_id"]  # fmt: skip
    assert all(c in lc.colnames for c in required)
    assert len(lc) == 120 and np.all(np.diff(lc["mjd_utc"]) > 0)
    np.testing.assert_allclose(lc["bjd_tdb"], bjd_tdb(lc["mjd_utc"], RA, DEC, location=SITE))
    assert np.all((lc["airmass"] > 1.0) & (lc["airmass"] < 1.3))
    for band in ("V", "R"):
        sel = lc["filter"] == band
        t = lc["mjd_utc"][sel] - MJD0
        rel = lc["rel_flux"][sel]
        in_tr = (t > 0.055) & (t < 0.095)
        out_tr = (t < 0.045) | (t > 0.105)
        depth = 1 - np.median(rel[in_tr]) / np.median(rel[out_tr])
        assert depth == pytest.approx(DEPTH, rel=0.15)
        assert band in lc.meta["comparison"] and len(lc.meta["comparison"][band]["source_ids"]) >= 10
    flags = np.asarray(lc["flags"])
    cloud = (flags & LightCurveFlag.LOW_TRANSPARENCY) != 0
    assert set(np.flatnonzero(cloud)) == set(range(40, 46))
    assert flags[7] & PhotFlag.CR  # the target's own photometry flag is kept
    np.testing.assert_allclose(lc["mag"], -2.5 * np.log10(lc["flux"]))
    assert lc.meta["target_id"] == 100 and lc.meta["site"]["height_m"] == pytest.approx(2788.0)
    assert np.all(lc["segment"] == 0)

    # writers: CSV, ECSV, Parquet round trips
    for suffix in (".csv", ".ecsv", ".parquet"):
        path = write_lightcurve(lc, tmp_path / f"lc{suffix}")
        back = read_lightcurve(path)
        np.testing.assert_allclose(back["bjd_tdb"], lc["bjd_tdb"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(back["rel_flux"], lc["rel_flux"], rtol=1e-12)
        assert list(back["filter"]) == list(lc["filter"])
        if suffix != ".csv":  # ECSV and Parquet keep units and metadata
            assert back["bjd_tdb"].unit == "d" and back.meta["target_id"] == 100
    with pytest.raises(BadInputError, match="suffix"):
        write_lightcurve(lc, tmp_path / "lc.txt")

    png = plot_lightcurve(lc, tmp_path / "lc.png", bin_minutes=15)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_named_comparisons_no_site_and_instrumental_only():
    meas = _measurements(1)
    meas["ra"] = RA
    meas["dec"] = DEC
    lc = build_lightcurve(meas, target_id=100, comparison_ids=[101, 102, 103])
    assert lc.meta["comparison"]["V"]["source_ids"] == [101, 102, 103]
    assert np.all(np.isnan(lc["airmass"]))  # no site, no airmass column
    assert lc.meta["ra_deg"] == pytest.approx(RA)
    plain = build_lightcurve(meas, target_id=100, config=LightCurveConfig(differential=False))
    assert np.all(np.isnan(plain["rel_flux"])) and np.all(np.isfinite(plain["flux"]))
    with pytest.raises(BadInputError, match="no measurement"):
        build_lightcurve(meas, target_id=5)
    with pytest.raises(BadInputError, match="comparison"):
        build_lightcurve(meas, target_id=100, comparison_ids=[999])
    meas["zp"] = 21.0
    meas["zp"][meas["image_id"] == 1070] = 20.6  # 0.69 of the flux: flagged even without an ensemble
    zp_flagged = build_lightcurve(meas, target_id=100, config=LightCurveConfig(differential=False))
    low = (np.asarray(zp_flagged["flags"]) & LightCurveFlag.LOW_TRANSPARENCY) != 0
    assert list(np.asarray(zp_flagged["image_id"])[low]) == [1070]
    lonely = meas[np.isin(meas["source_id"], [100, 101])]
    lc2 = build_lightcurve(lonely, target_id=100)  # one comparison < min_comparisons=2
    assert np.all(np.asarray(lc2["flags"]) & LightCurveFlag.NO_ENSEMBLE)


def test_transparency_flags_from_ensemble_and_zero_point():
    ens = np.ones(50)
    ens[10:13] = 0.6
    ens[30] = 0.79
    ens[31] = 0.81
    assert list(np.flatnonzero(transparency_flags(ensemble_flux=ens))) == [10, 11, 12, 30]
    zp = np.full(50, 21.0)
    zp[20] = 21.0 - 0.3  # 10^(-0.12) = 0.76 of the flux
    zp[21] = 21.0 - 0.2  # 0.83
    assert list(np.flatnonzero(transparency_flags(zero_point=zp))) == [20]
    slow = np.linspace(1.0, 0.5, 50)  # a slow drift is followed by a running reference
    assert transparency_flags(ensemble_flux=slow).sum() > 10
    assert transparency_flags(ensemble_flux=slow, config=TransparencyConfig(window_epochs=9)).sum() == 0
    with pytest.raises(BadInputError):
        transparency_flags()


def test_split_and_bin():
    t = Table(
        {
            "mjd_utc": np.concatenate([np.arange(10.0), 200 + np.arange(5.0), np.arange(3.0)]),
            "filter": ["g"] * 15 + ["r"] * 3,
            "rel_flux": np.ones(18),
        }
    )
    parts = split_lightcurve(t, season_gap_days=60)
    assert sorted(parts) == [("g", 0), ("g", 1), ("r", 0)]
    assert len(parts[("g", 0)]) == 10 and len(parts[("g", 1)]) == 5
    assert len(split_lightcurve(t, season_gap_days=None)) == 2
    tb, vb, eb, n = bin_lightcurve(np.arange(12) / 1440.0, np.arange(12.0), np.ones(12), bin_minutes=4)
    assert list(n) == [4, 4, 4] and list(vb) == [1.5, 5.5, 9.5]
    np.testing.assert_allclose(tb * 1440.0, [1.5, 5.5, 9.5])
    np.testing.assert_allclose(eb, 0.5)
    _tb2, vb2, eb2, _ = bin_lightcurve(np.arange(4) / 1440.0, np.array([1.0, 3.0, 5.0, 7.0]), bin_minutes=2)
    np.testing.assert_allclose(vb2, [2.0, 6.0])
    np.testing.assert_allclose(eb2, [1.0, 1.0])
