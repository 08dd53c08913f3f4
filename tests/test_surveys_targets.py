"""Target catalogues: column mapping over five formats, proper motion vs astropy, the default `wd`
catalogue through a local VizieR stand-in (never the internet)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from astropy.table import Table

from darkroom.errors import BadInputError
from darkroom.surveys.targets import (
    fetch_default_catalog,
    parse_columns,
    propagate_space_motion,
    read_target_file,
    standardize_targets,
    targets_at_epoch,
)

WD_COLUMNS = "name=GaiaEDR3,ra=RA_ICRS,dec=DE_ICRS,epoch=2016.0,pmra=pmRA,pmdec=pmDE,parallax=Plx,mag.G=Gmag,mag.r=rmag"


@pytest.fixture(scope="module")
def wd_csv(data_dir):
    return data_dir / "wd-catalog-gf21" / "MontWarWDs.csv"


@pytest.fixture(scope="module")
def wd_targets(wd_csv):
    return standardize_targets(read_target_file(wd_csv), parse_columns(WD_COLUMNS), catalog="montwar")


def test_wd_catalog_imports_7077_targets_with_non_default_columns(wd_targets):
    # MANIFEST: 7,077 white dwarfs, 326 distinct integer-RA-degree bins
    assert len(wd_targets) == 7077
    assert len(set(wd_targets["name"])) == 7077
    assert len(np.unique(np.floor(wd_targets["ra_deg"]).astype(int))) == 326
    assert np.all(wd_targets["epoch_jyear"] == 2016.0)
    assert np.isfinite(wd_targets["mag_G"]).all() and "mag_r" in wd_targets.colnames
    assert wd_targets.meta["n_dropped"] == 0


def test_proper_motion_to_2019_matches_astropy_within_1_mas(wd_targets):
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.time import Time

    moved = targets_at_epoch(wd_targets, 2019.0)
    coord = SkyCoord(
        ra=np.asarray(wd_targets["ra_deg"]) * u.deg,
        dec=np.asarray(wd_targets["dec_deg"]) * u.deg,
        pm_ra_cosdec=np.asarray(wd_targets["pmra_masyr"]) * u.mas / u.yr,
        pm_dec=np.asarray(wd_targets["pmdec_masyr"]) * u.mas / u.yr,
        distance=(1000.0 / np.clip(np.asarray(wd_targets["parallax_mas"]), 0.01, None)) * u.pc,
        obstime=Time(2016.0, format="jyear", scale="tcb"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        truth = coord.apply_space_motion(new_obstime=Time(2019.0, format="jyear", scale="tcb"))
    ours = SkyCoord(ra=np.asarray(moved["ra_deg"]) * u.deg, dec=np.asarray(moved["dec_deg"]) * u.deg)
    sep_mas = ours.separation(truth).to_value(u.mas)
    moved_by = ours.separation(coord).to_value(u.mas)
    assert sep_mas.max() < 1.0, sep_mas.max()
    # the check has teeth: the fastest stars moved by arcseconds
    assert moved_by.max() > 3000


def test_space_motion_is_exact_near_the_pole():
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.time import Time

    ra, dec, pmra, pmdec = 10.0, 89.99, 3000.0, -2000.0
    new_ra, new_dec = propagate_space_motion(
        ra, dec, pmra, pmdec, from_epoch_jyear=2000.0, to_epoch_jyear=2030.0
    )
    c = SkyCoord(
        ra * u.deg,
        dec * u.deg,
        pm_ra_cosdec=pmra * u.mas / u.yr,
        pm_dec=pmdec * u.mas / u.yr,
        distance=10 * u.pc,
        obstime=Time(2000.0, format="jyear"),
    )
    truth = c.apply_space_motion(new_obstime=Time(2030.0, format="jyear"))
    assert SkyCoord(new_ra * u.deg, new_dec * u.deg).separation(truth).to_value(u.mas) < 1.0


@pytest.mark.parametrize("suffix", [".ecsv", ".fits", ".parquet", ".hdf5", ".csv"])
def test_every_format_reads_the_same_targets(tmp_path, wd_csv, suffix):
    raw = read_target_file(wd_csv)[:50]
    keep = ["GaiaEDR3", "RA_ICRS", "DE_ICRS", "pmRA", "pmDE", "Plx", "Gmag", "rmag"]
    sub = raw[keep]
    path = tmp_path / f"t{suffix}"
    if suffix == ".hdf5":
        sub.write(path, format="hdf5", path="targets", serialize_meta=True)
    else:
        sub.write(path)
    got = standardize_targets(read_target_file(path), parse_columns(WD_COLUMNS), catalog="x")
    assert len(got) == 50
    assert list(got["name"]) == [str(v) for v in sub["GaiaEDR3"]]
    np.testing.assert_allclose(got["ra_deg"], sub["RA_ICRS"], atol=1e-12)
    np.testing.assert_allclose(got["pmdec_masyr"], sub["pmDE"])


def test_default_names_and_bad_columns(tmp_path):
    t = Table({"name": ["a", "b", "b", "c"], "ra": [1.0, 2.0, 3.0, np.nan], "dec": [0.0, 1.0, 2.0, 3.0]})
    got = standardize_targets(t, parse_columns(None), catalog="mine")
    assert list(got["name"]) == ["a", "b"]  # 'b' repeated keeps its first row; 'c' has no RA
    assert got.meta["n_duplicates"] == 1 and got.meta["n_dropped"] == 1
    assert np.all(np.isnan(got["epoch_jyear"]))
    with pytest.raises(BadInputError, match="no ra column 'RA'"):
        standardize_targets(t, parse_columns("ra=RA"), catalog="mine")
    with pytest.raises(BadInputError, match="key 'colour' unknown"):
        parse_columns("colour=bp_rp")
    with pytest.raises(BadInputError, match="not found"):
        read_target_file(tmp_path / "missing.csv")


def _votable_bytes(table: Table) -> bytes:
    from astropy.io.votable import from_table

    buf = io.BytesIO()
    from_table(table).to_xml(buf)
    return buf.getvalue()


def test_default_wd_catalogue_through_local_vizier(tmp_path, httpserver, wd_csv):
    raw = read_target_file(wd_csv)[:200]
    t = Table()
    t["WDJname"] = [f"WDJ{i:06d}" for i in range(len(raw))]
    for col in ("GaiaEDR3", "RA_ICRS", "DE_ICRS", "Plx", "pmRA", "pmDE", "Gmag", "BPmag", "RPmag", "Pwd"):
        t[col] = raw[col]
    httpserver.expect_request("/viz-bin/votable").respond_with_data(
        _votable_bytes(t), content_type="text/xml"
    )
    cache = tmp_path / "cache"
    got = fetch_default_catalog("wd", base_url=httpserver.url_for("/"), cache_dir=cache)
    assert len(got) == 200 and got["name"][0] == "WDJ000000"
    np.testing.assert_allclose(got["pmra_masyr"], raw["pmRA"])
    assert np.all(got["epoch_jyear"] == 2016.0)
    ((request, _),) = httpserver.log
    assert request.args["-source"] == "J/MNRAS/508/3877/maincat" and request.args["Pwd"] == ">0.75"
    # the cache answers the second time: no new request
    again = fetch_default_catalog("wd", base_url=httpserver.url_for("/"), cache_dir=cache)
    assert len(again) == 200 and len(httpserver.log) == 1
