"""Automatic targets: OBJECT names resolved through a stand-in Sesame server, cached in the
repository; the pointing keywords when a name does not resolve; a reason when nothing is left."""

from __future__ import annotations

import json

from darkroom.facade import Repository
from darkroom.pipeline.targets import automatic_targets, name_variants
from darkroom.repo.models import Exposure

XO1 = (240.549333, 28.169556)  # XO-1 (ICRS), as the README's tour gives it


def _sesame_reply(name: str, ra: float, dec: float) -> str:
    # The lines of a Sesame answer that matter: a name echo and the %J ICRS position.
    return f"# {name}\n#=S=Simbad:    1\n%C.0 Pl\n%J {ra:.6f} {dec:+.6f} = 16 02 11.84 +28 10 10.4\n%I.0 {name}\n"


def _exposure(i: int, obj: str, ra: float | None, dec: float | None) -> Exposure:
    return Exposure(
        sha256=f"{i:064x}",
        path=f"/data/f{i}.fits",
        size_bytes=1,
        state="ok",
        frame_type="light",
        object=obj,
        ra_deg=ra,
        dec_deg=dec,
        meta={},
    )


def test_name_variants_cover_the_arcsat_spelling():
    assert name_variants("XO1-b")[:3] == ["XO1-b", "XO-1b", "XO-1 b"]
    assert "WASP-12b" in name_variants("WASP 12b")


def test_objects_become_targets_resolved_cached_or_at_the_pointing(tmp_path, httpserver):
    httpserver.expect_request("/SNV", query_string="XO-1b").respond_with_data(_sesame_reply("XO-1b", *XO1))
    httpserver.expect_request("/SNV").respond_with_data("# nothing found\n#! *** Nothing found ***\n")
    root = tmp_path / "repo"
    repo = Repository.init(root, overrides=[f"names.sesame_urls=['{httpserver.url_for('/')}']"])
    with repo.registry.session() as s:
        s.add_all(
            [
                _exposure(1, "XO1-b", 240.5521, 28.1712),  # the pointing is 12" off the star
                _exposure(2, "XO1-b", 240.5523, 28.1714),
                _exposure(3, "Mystery field", 10.25, -5.5),
                _exposure(4, "Mystery field", 10.27, -5.5),
                _exposure(5, "Nowhere", None, None),
            ]
        )
    found, left_out = automatic_targets(repo.registry, repo.root, repo.config.names, online=True)
    by_name = {t.target.name: t for t in found}
    assert set(by_name) == {"XO1-b", "Mystery field"}
    xo1 = by_name["XO1-b"]
    assert xo1.how == "sesame" and "XO-1b" in xo1.note and "XO1-b" in xo1.note
    assert abs(xo1.target.ra_deg - XO1[0]) < 1e-6 and abs(xo1.target.dec_deg - XO1[1]) < 1e-6
    mystery = by_name["Mystery field"]
    assert mystery.how == "pointing" and "OBJCTRA/OBJCTDEC" in mystery.note
    assert abs(mystery.target.ra_deg - 10.26) < 1e-9 and mystery.target.dec_deg == -5.5
    assert len(left_out) == 1 and "Nowhere" in left_out[0] and "targets:" in left_out[0]
    cache = json.loads((root / "catalogs" / "names.json").read_text())
    assert cache["XO1-b"]["as"] == "XO-1b" and cache["Mystery field"] == {"unresolved": True}

    # Cached: the next run asks nothing (the server would now fail every request).
    n_requests = len(httpserver.log)
    httpserver.clear()
    again, _ = automatic_targets(repo.registry, repo.root, repo.config.names, online=True)
    assert [t.target for t in again] == [t.target for t in found]
    assert len(httpserver.log) == 0 and n_requests >= 2
    repo.close()

    # Every face of the repository sees the same targets, from the cache, darkroom.yaml untouched.
    before = (root / "darkroom.yaml").read_text()
    with Repository(root) as r:
        assert {t.name for t in r.config.targets} == {"XO1-b", "Mystery field"}
        assert any("resolved by Sesame" in n for n in r.target_notes)
    assert (root / "darkroom.yaml").read_text() == before


def test_user_targets_win_and_automatic_targets_can_be_turned_off(tmp_path):
    root = tmp_path / "repo"
    Repository.init(root, overrides=["names.automatic_targets=false"]).close()
    with Repository(root) as r:
        with r.registry.session() as s:
            s.add(_exposure(1, "XO1-b", 240.55, 28.17))
        r.apply_automatic_targets(online=False)
        assert r.config.targets == []
    root2 = tmp_path / "repo2"
    Repository.init(root2, overrides=["targets=[{name: mine, ra_deg: 1.0, dec_deg: 2.0}]"]).close()
    with Repository(root2) as r:
        with r.registry.session() as s:
            s.add(_exposure(1, "XO1-b", 240.55, 28.17))
        r.apply_automatic_targets(online=False)
        assert [t.name for t in r.config.targets] == ["mine"]


# XO-1b, Ivshina & Winn 2022 (the ARCSAT MANIFEST's known answer): this night's mid-transit is
# 2460828.73779 BJD_TDB (+-0.8 min); T14 ~2.93 h.
XO1B_ROW = {"pl_name": "XO-1 b", "pl_tranmid": 2456055.57566, "pl_orbper": 3.94150465, "pl_trandur": 2.93}


def _votable(rows: list[dict]) -> bytes:
    import io

    from astropy.io.votable import from_table
    from astropy.table import Table

    table = (
        Table(rows=[tuple(r.values()) for r in rows], names=list(rows[0]))
        if rows
        else Table(names=list(XO1B_ROW), dtype=[str, float, float, float])
    )
    buf = io.BytesIO()
    from_table(table).to_xml(buf)
    return buf.getvalue()


def test_predicted_transit_of_xo1b_on_the_arcsat_night():
    from darkroom.timeseries.ephemeris import Ephemeris, predict_transit

    eph = Ephemeris("XO-1 b", XO1B_ROW["pl_tranmid"], XO1B_ROW["pl_orbper"], XO1B_ROW["pl_trandur"])
    c = predict_transit(eph, 2460828.70)  # the night's middle
    assert abs(c.mid - 2460828.73779) * 1440 < 0.8
    assert abs((c.egress - c.ingress) * 24 - 2.93) < 1e-9 and c.ingress < c.mid < c.egress


def test_ephemeris_from_a_stand_in_exoplanet_archive_is_cached(tmp_path, httpserver):
    from darkroom.pipeline.targets import planet_ephemerides, planet_name

    assert planet_name("XO1-b") == "XO-1 b" and planet_name("XO-1b") == "XO-1 b"
    assert planet_name("43 Bet Com") is None and planet_name("M 13") is None
    httpserver.expect_request("/TAP/sync", method="POST").respond_with_data(
        _votable([XO1B_ROW]), content_type="text/xml"
    )
    root = tmp_path / "repo"
    repo = Repository.init(root, overrides=[f"names.exoplanet_archive_tap={httpserver.url_for('/TAP')}"])
    got = planet_ephemerides(repo.root, ["XO1-b", "Mystery field"], repo.config.names, online=True)
    assert set(got) == {"XO1-b"}
    assert got["XO1-b"].period_d == XO1B_ROW["pl_orbper"] and got["XO1-b"].duration_h == 2.93
    query = httpserver.log[0][0].form.get("QUERY", "")
    assert "pscomppars" in query and "'XO-1 b'" in query
    n = len(httpserver.log)
    httpserver.clear()
    again = planet_ephemerides(repo.root, ["XO1-b", "Mystery field"], repo.config.names, online=True)
    assert again == got and len(httpserver.log) == 0 and n == 1  # "Mystery field" is no planet name
    repo.close()


def test_unresolved_object_takes_the_brightest_source_at_the_pointing(tmp_path):
    """Offline, with no targets in darkroom.yaml: the OBJECT is not looked up, and the header
    pointing lies 60 arcsec from the host star (far beyond the light curves' match radius;
    a fainter star lies nearer). The brightest star within 120 arcsec of the pointing is the
    host (what the observer pointed at); the light curve made is its."""
    import numpy as np
    from astropy.time import Time
    from sqlalchemy import select

    from darkroom.catalogs.reference import angular_separation_deg
    from darkroom.pipeline.ingest import ingest_paths
    from darkroom.pipeline.run import all_stages
    from darkroom.pipeline.runner import run_stage
    from darkroom.repo.models import Lightcurve, Source
    from darkroom.sim import SimConfig, simulate_night

    night = simulate_night(
        tmp_path / "sim",
        SimConfig(seed=21, n_science=6, shape=(320, 320), n_stars=120, header_pointing_error_arcsec=60.0),
    )
    host = night.truth.catalog[0]
    epoch = Time(night.config.start_utc).jyear
    refcat = [
        "astrometry.solve.reference_catalog.kind=file",
        f"astrometry.solve.reference_catalog.path={night.refcat_path}",
        "astrometry.solve.reference_catalog.columns={ra: ra_deg, dec: dec_deg, mag: r_mag, "
        f"pmra: pmra_mas_yr, pmdec: pmdec_mas_yr, source_id: source_id, epoch_jyear: {epoch:.5f}}}",
    ]
    with Repository.init(tmp_path / "repo", overrides=refcat) as repo:
        ingest_paths(repo.registry, [night.raw_paths["light"][0].parent])
        repo.apply_automatic_targets(online=False)
        (target,) = repo.config.targets
        assert target.search_radius_arcsec == repo.config.names.pointing_search_radius_arcsec
        assert any("the brightest within" in n for n in repo.target_notes)
        pointing_error = 3600 * float(
            angular_separation_deg(target.ra_deg, target.dec_deg, host["ra_deg"], host["dec_deg"])
        )
        assert pointing_error > 10 * repo.config.photometry.lightcurves.match_radius_arcsec
        for stage in all_stages(repo.root, repo.config):
            assert run_stage(repo.registry, stage).n_failed == 0, stage.name
        with repo.registry.session() as s:
            (lc,) = s.scalars(select(Lightcurve).where(Lightcurve.object_id == target.name)).all()
            src = s.get(Source, lc.source_id)
            off = 3600 * float(
                angular_separation_deg(src.ra_deg, src.dec_deg, host["ra_deg"], host["dec_deg"])
            )
    assert off < 1.0 and lc.n_points == 6 and np.isfinite(off)
