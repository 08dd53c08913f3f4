"""darkroom.catalogs: local files, shards, proper motion and online services (a local HTTP server)."""

from __future__ import annotations

import io
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import votable
from astropy.table import Table
from astropy.time import Time
from numpy.testing import assert_allclose

from darkroom.catalogs import (
    CatalogColumns,
    FileCatalogSource,
    OnlineCatalogSource,
    ShardCatalogSource,
    angular_separation_deg,
    atlas_refcat2,
    gaia_dr3,
    load_reference_catalog,
    query_catalog,
    read_catalog_file,
    read_catalog_shards,
    standardize_catalog,
)
from darkroom.errors import BadInputError, DarkroomError

REFCAT2_COLUMNS = CatalogColumns(
    ra="RA_ICRS", dec="DE_ICRS", mag="rmag", pmra="pmRA", pmdec="pmDE", epoch_jyear=2015.5, source_id="id"
)
CENTER = (135.617, 49.786)  # the EY UMa thumbnail centre (astrometry.net solution)


@pytest.fixture(scope="module")
def refcat2(data_dir) -> Table:
    return Table.read(data_dir / "feder-eyuma-astrometry-photcal" / "all_refcat2_ey_uma.ecsv")


def _plain(table: Table) -> Table:
    """The columns every format can hold."""
    return table["id", "RA_ICRS", "DE_ICRS", "pmRA", "pmDE", "rmag", "gmag"]


# ---------------------------------------------------------------- local files ---------


@pytest.mark.filterwarnings("ignore:Keyword name 'description'")
@pytest.mark.parametrize("suffix", [".fits", ".ecsv", ".csv", ".parquet"])
def test_every_format_reads_the_same(tmp_path, refcat2, suffix):
    path = tmp_path / f"refcat2{suffix}"
    _plain(refcat2).write(path)
    table = read_catalog_file(path, columns=REFCAT2_COLUMNS)
    assert len(table) == len(refcat2)
    ref = standardize_catalog(refcat2, columns=REFCAT2_COLUMNS)
    assert_allclose(table["ra_deg"], ref["ra_deg"], rtol=0, atol=1e-9)
    assert_allclose(table["dec_deg"], ref["dec_deg"], rtol=0, atol=1e-9)
    assert table["source_id"].tolist() == ref["source_id"].tolist()
    # brightest first
    mags = np.asarray(table["mag"])
    assert np.all(np.diff(mags[np.isfinite(mags)]) >= 0)
    assert table.meta["epoch_jyear"] == 2015.5


def test_standard_columns_and_units(refcat2):
    table = standardize_catalog(refcat2, columns=REFCAT2_COLUMNS, name="refcat2")
    assert table.colnames[:6] == ["ra_deg", "dec_deg", "mag", "pmra_masyr", "pmdec_masyr", "source_id"]
    assert table["ra_deg"].unit == u.deg
    assert "rmag" in table.colnames  # original columns are kept
    assert table.meta["catalog"] == "refcat2"


def test_radians_with_and_without_units(refcat2):
    plain = Table(
        {
            "ra": np.radians(np.asarray(refcat2["RA_ICRS"])),
            "dec": np.radians(np.asarray(refcat2["DE_ICRS"])),
        }
    )
    as_rad = standardize_catalog(plain, columns=CatalogColumns(angle_unit="rad"))
    assert_allclose(np.sort(as_rad["ra_deg"]), np.sort(np.asarray(refcat2["RA_ICRS"])), atol=1e-10)
    with_units = plain.copy()
    with_units["ra"].unit = u.rad
    with_units["dec"].unit = u.rad
    auto = standardize_catalog(with_units, columns=CatalogColumns())  # the column unit wins
    assert_allclose(np.sort(auto["dec_deg"]), np.sort(np.asarray(refcat2["DE_ICRS"])), atol=1e-10)
    with pytest.raises(BadInputError, match="radians"):
        standardize_catalog(
            Table({"ra": [10.0, 20.0], "dec": [95.0, 100.0]}), columns=CatalogColumns()
        )  # 95 deg: not degrees


def test_proper_motion_matches_astropy_space_motion(refcat2):
    epoch = Time("2018-04-17T03:35:22", scale="utc").jyear
    moved = standardize_catalog(refcat2, columns=REFCAT2_COLUMNS, epoch_jyear=epoch)
    still = standardize_catalog(refcat2, columns=REFCAT2_COLUMNS)
    assert moved.meta["epoch_jyear"] == pytest.approx(epoch)
    pm_ok = np.isfinite(np.ma.filled(np.ma.asarray(still["pmRA"], dtype=float), np.nan)) & np.isfinite(
        np.ma.filled(np.ma.asarray(still["pmDE"], dtype=float), np.nan)
    )
    assert np.count_nonzero(~pm_ok) == 2  # one star lacks pmRA, another pmDE
    coords = SkyCoord(
        ra=np.asarray(still["ra_deg"])[pm_ok] * u.deg,
        dec=np.asarray(still["dec_deg"])[pm_ok] * u.deg,
        pm_ra_cosdec=np.asarray(still["pmra_masyr"])[pm_ok] * u.mas / u.yr,
        pm_dec=np.asarray(still["pmdec_masyr"])[pm_ok] * u.mas / u.yr,
        distance=1 * u.kpc,
        obstime=Time(2015.5, format="jyear"),
    )
    truth = coords.apply_space_motion(new_obstime=Time(epoch, format="jyear"))
    dist_mas = (
        angular_separation_deg(
            truth.ra.deg,
            truth.dec.deg,
            np.asarray(moved["ra_deg"])[pm_ok],
            np.asarray(moved["dec_deg"])[pm_ok],
        )
        * 3.6e6
    )
    # 2.8 years of motion; astropy adds the (tiny) radial-velocity / perspective terms
    assert np.max(dist_mas) < 0.05
    # and the motion itself is real: each star moved by |pm| * dt
    shift = (
        angular_separation_deg(still["ra_deg"], still["dec_deg"], moved["ra_deg"], moved["dec_deg"]) * 3600
    )
    total_pm = np.hypot(still["pmra_masyr"], still["pmdec_masyr"]) * (epoch - 2015.5) / 1000.0
    assert_allclose(shift, total_pm, atol=1e-6)
    assert np.max(shift) > 0.4
    # a missing component counts as zero: those stars move along one axis only
    assert np.all(shift[~pm_ok] > 0)
    assert_allclose(shift[~pm_ok], total_pm[~pm_ok], atol=1e-6)


def test_proper_motion_known_answer():
    table = Table({"ra": [10.0], "dec": [60.0], "pmra": [1000.0], "pmdec": [-500.0]})
    cols = CatalogColumns(pmra="pmra", pmdec="pmdec", epoch_jyear=2000.0)
    out = standardize_catalog(table, columns=cols, epoch_jyear=2010.0)
    # 10 yr: dDec = -5000 mas; dRA = 10000 mas / cos(60 deg) = 20000 mas (to first order)
    assert out["dec_deg"][0] == pytest.approx(60.0 - 5.0 / 3600, abs=1e-9)
    assert out["ra_deg"][0] == pytest.approx(
        10.0 + 20.0 / 3600 / (np.cos(np.radians(60 - 2.5 / 3600)) * 2), abs=1e-8
    )


@pytest.mark.filterwarnings("ignore:Keyword name 'description'")
def test_cone_and_shards_agree(tmp_path, refcat2):
    plain = _plain(refcat2)
    folder = tmp_path / "shards"
    folder.mkdir()
    dec = np.asarray(plain["DE_ICRS"])
    edges = np.quantile(dec, [0.0, 0.33, 0.66, 1.0])
    edges[-1] += 1
    for i, suffix in enumerate([".fits", ".parquet", ".ecsv"]):
        part = plain[(dec >= edges[i]) & (dec < edges[i + 1])]
        part.write(folder / f"band{i}{suffix}")
    (folder / "README.txt").write_text("not a shard")
    radius = 0.12
    one = read_catalog_file(
        _write(plain, tmp_path / "all.fits"),
        columns=REFCAT2_COLUMNS,
        ra_deg=CENTER[0],
        dec_deg=CENTER[1],
        radius_deg=radius,
    )
    shards = read_catalog_shards(
        folder, columns=REFCAT2_COLUMNS, ra_deg=CENTER[0], dec_deg=CENTER[1], radius_deg=radius
    )
    assert 20 < len(one) < len(plain)
    assert sorted(one["source_id"].tolist()) == sorted(shards["source_id"].tolist())
    sep = angular_separation_deg(CENTER[0], CENTER[1], shards["ra_deg"], shards["dec_deg"])
    assert np.max(sep) <= radius
    # the same through the one-config loader
    loaded = load_reference_catalog(
        ShardCatalogSource(folder=folder, columns=REFCAT2_COLUMNS),
        ra_deg=CENTER[0],
        dec_deg=CENTER[1],
        radius_deg=radius,
    )
    assert len(loaded) == len(shards)
    loaded = load_reference_catalog(
        FileCatalogSource(path=tmp_path / "all.fits", columns=REFCAT2_COLUMNS),
        ra_deg=CENTER[0],
        dec_deg=CENTER[1],
        radius_deg=radius,
    )
    assert len(loaded) == len(one)


def _write(table: Table, path):
    table.write(path, overwrite=True)
    return path


def test_missing_column_and_file_errors(tmp_path, refcat2):
    with pytest.raises(BadInputError, match="'RAJ2000'"):
        standardize_catalog(refcat2, columns=CatalogColumns(ra="RAJ2000", dec="DE_ICRS"))
    with pytest.raises(BadInputError, match="not found"):
        read_catalog_file(tmp_path / "nope.fits", columns=REFCAT2_COLUMNS)
    (tmp_path / "cat.txt").write_text("x")
    with pytest.raises(BadInputError, match="unknown catalog format"):
        read_catalog_file(tmp_path / "cat.txt", columns=REFCAT2_COLUMNS)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError, match="no catalog files"):
        read_catalog_shards(empty, columns=REFCAT2_COLUMNS, ra_deg=0, dec_deg=0, radius_deg=1)


# ---------------------------------------------------------------- online (local server) ---------


class _CatalogServer:
    """A VizieR-like and TAP-like HTTP server on 127.0.0.1 answering cone searches from a table."""

    def __init__(self, table: Table):
        self.table = table
        self.requests: list[str] = []
        self.fail_with: int | None = None
        self.votable_error = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                server.requests.append(self.path)
                parsed = urllib.parse.urlparse(self.path)
                if parsed.path != "/viz-bin/votable":
                    self.send_error(404)
                    return
                q = urllib.parse.parse_qs(parsed.query)
                if q["-source"][0] != "J/ApJ/867/105/refcat2":
                    self.send_error(400, "unknown catalog")
                    return
                ra, dec = (float(v) for v in q["-c"][0].split())
                self._answer(ra, dec, float(q["-c.rd"][0]), int(q["-out.max"][0]), rename={})

            def do_POST(self):
                server.requests.append(self.path)
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                form = urllib.parse.parse_qs(body)
                if self.path != "/tap/sync" or form["REQUEST"][0] != "doQuery":
                    self.send_error(404)
                    return
                query = form["QUERY"][0]
                m = re.search(r"CIRCLE\('ICRS', ([-\d.]+), ([-\d.+]+), ([\d.]+)\)", query)
                top = int(re.search(r"TOP (\d+)", query).group(1))
                rename = {
                    "RA_ICRS": "ra",
                    "DE_ICRS": "dec",
                    "pmRA": "pmra",
                    "pmDE": "pmdec",
                    "Gmag": "phot_g_mean_mag",
                    "id": "source_id",
                }
                self._answer(float(m.group(1)), float(m.group(2)), float(m.group(3)), top, rename=rename)

            def _answer(self, ra, dec, radius, max_rows, rename):
                if server.fail_with:
                    self.send_error(server.fail_with, "service down")
                    return
                if server.votable_error:
                    payload = (
                        b'<?xml version="1.0"?><VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">'
                        b'<RESOURCE type="results"><INFO name="QUERY_STATUS" value="ERROR">bad ADQL</INFO>'
                        b"</RESOURCE></VOTABLE>"
                    )
                else:
                    t = server.table
                    coords = SkyCoord(t["RA_ICRS"], t["DE_ICRS"], unit="deg")
                    keep = coords.separation(SkyCoord(ra, dec, unit="deg")).deg <= radius
                    out = t[keep][:max_rows]
                    for old, new in rename.items():
                        out.rename_column(old, new)
                    buf = io.BytesIO()
                    votable.from_table(out).to_xml(buf)
                    payload = buf.getvalue()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-votable+xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(refcat2):
    with _CatalogServer(refcat2["id", "RA_ICRS", "DE_ICRS", "pmRA", "pmDE", "Gmag", "rmag", "gmag"]) as srv:
        yield srv


def _expected_ids(refcat2, radius):
    sep = angular_separation_deg(CENTER[0], CENTER[1], refcat2["RA_ICRS"], refcat2["DE_ICRS"])
    return sorted(str(v) for v in np.asarray(refcat2["id"])[sep <= radius])


def test_vizier_query_and_cache(server, refcat2, tmp_path):
    config = atlas_refcat2(base_url=server.url).model_copy(
        update={"columns": REFCAT2_COLUMNS.model_copy(update={"mag": "rmag"})}
    )
    radius = 0.1
    epoch = Time("2018-04-17T03:35:22").jyear
    table = query_catalog(
        config,
        ra_deg=CENTER[0],
        dec_deg=CENTER[1],
        radius_deg=radius,
        epoch_jyear=epoch,
        cache_dir=tmp_path / "cache",
    )
    assert len(server.requests) == 1
    assert "-source=J%2FApJ%2F867%2F105%2Frefcat2" in server.requests[0]
    assert sorted(table["source_id"].tolist()) == _expected_ids(refcat2, radius)
    assert table.meta["epoch_jyear"] == pytest.approx(epoch)
    cached = list((tmp_path / "cache").glob("vizier_J_ApJ_867_105_refcat2_*.ecsv"))
    assert len(cached) == 1
    # the second call is served from the cache: no new request, same rows
    again = query_catalog(
        config,
        ra_deg=CENTER[0],
        dec_deg=CENTER[1],
        radius_deg=radius,
        epoch_jyear=epoch,
        cache_dir=tmp_path / "cache",
    )
    assert len(server.requests) == 1
    assert_allclose(again["ra_deg"], table["ra_deg"], rtol=0, atol=1e-12)
    # a different cone is a different query
    query_catalog(config, ra_deg=CENTER[0], dec_deg=CENTER[1], radius_deg=0.05, cache_dir=tmp_path / "cache")
    assert len(server.requests) == 2
    # refresh asks again
    query_catalog(
        config,
        ra_deg=CENTER[0],
        dec_deg=CENTER[1],
        radius_deg=radius,
        cache_dir=tmp_path / "cache",
        refresh=True,
    )
    assert len(server.requests) == 3


def test_tap_query_gaia_preset(server, refcat2, tmp_path):
    config = gaia_dr3(base_url=f"{server.url}/tap").model_copy(update={"out_columns": None})
    source = OnlineCatalogSource(online=config)
    table = load_reference_catalog(
        source, ra_deg=CENTER[0], dec_deg=CENTER[1], radius_deg=0.08, cache_dir=tmp_path / "c"
    )
    assert server.requests == ["/tap/sync"]
    assert sorted(table["source_id"].tolist()) == _expected_ids(refcat2, 0.08)
    assert table.meta["epoch_jyear"] == 2016.0
    # ranked by the G magnitude of the preset
    assert np.all(np.diff(np.asarray(table["mag"])) >= 0)


def test_service_errors_are_one_line(server, tmp_path):
    config = atlas_refcat2(base_url=server.url)
    server.fail_with = 503
    with pytest.raises(DarkroomError, match="HTTP 503"):
        query_catalog(config, ra_deg=CENTER[0], dec_deg=CENTER[1], radius_deg=0.1, cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.ecsv"))  # nothing cached
    server.fail_with = None
    server.votable_error = True
    with pytest.raises(DarkroomError, match="bad ADQL"):
        query_catalog(
            gaia_dr3(base_url=f"{server.url}/tap"), ra_deg=CENTER[0], dec_deg=CENTER[1], radius_deg=0.1
        )
    closed = atlas_refcat2(base_url="http://127.0.0.1:9").model_copy(update={"timeout_s": 2.0})
    with pytest.raises(DarkroomError, match="cannot reach"):
        query_catalog(closed, ra_deg=CENTER[0], dec_deg=CENTER[1], radius_deg=0.1)
