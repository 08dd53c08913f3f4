"""ZTF light curves against a local stand-in for IRSA (never the internet): the recorded reply of
ztf-irsa-lightcurve at its target's position, header-only CSV elsewhere, HTTP 500 then success, a
stalled connection; the reduction against the MANIFEST's answers."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from pytest_httpserver import HTTPServer
from sqlalchemy import func, select
from werkzeug import Response

from darkroom.analysis.lcfile import read_lc_file
from darkroom.config import DarkroomConfig
from darkroom.errors import ConfigError
from darkroom.pipeline.stages import build_stages
from darkroom.pipeline.survey_targets import import_targets, survey_lightcurves
from darkroom.pipeline.ztf import ZtfDownloader, run_ztf
from darkroom.repo.models import Download, Lightcurve, Provenance, Target
from darkroom.repo.registry import Registry
from darkroom.surveys.http import load_credentials
from darkroom.surveys.settings import SurveysConfig
from darkroom.surveys.ztf import ZtfConfig, parse_reply, reduce_reply, skip_reason

STAR = (359.99975, 51.39372)  # MANIFEST: the faint star of the recorded reply


@pytest.fixture(scope="module")
def reply_bytes(data_dir) -> bytes:
    return (data_dir / "ztf-irsa-lightcurve" / "ZTF_lightcurve.csv").read_bytes()


# --- reduction (pure) ----------------------------------------------------------------------------


def test_reply_reduces_to_the_manifest_answers(reply_bytes):
    table = parse_reply(reply_bytes)
    assert len(table) == 1852
    red = reduce_reply(table, ra_deg=STAR[0], dec_deg=STAR[1], config=ZtfConfig(), catalogue_mag=20.3)
    assert red.rejected == {}
    assert red.n_seasons == 4  # gaps over 40 days: 58523->58597, 58895->58963, 59256->59328
    per_oid: dict[str, int] = {}
    for lc in red.lightcurves:
        per_oid[lc.object_id] = per_oid.get(lc.object_id, 0) + len(lc.table)
    assert per_oid == {
        "736115200001082": 525,
        "736215200001589": 531,
        "736315200051262": 19,
        "805101300013289": 344,
        "805201300017324": 433,
    }
    assert {lc.band for lc in red.lightcurves if lc.object_id == "736315200051262"} == {"i"}
    assert sum(lc.n_flagged for lc in red.lightcurves) == 51  # 42 x 32768, 7 x 1, 1 x 16, 1 x 516
    flags = np.concatenate([np.asarray(lc.table["catflags"]) for lc in red.lightcurves])
    assert sorted(set(flags.tolist())) == [0, 1, 16, 516, 32768] and np.sum(flags == 32768) == 42
    gaps = [(58523, 58597), (58895, 58963), (59256, 59328)]  # MANIFEST: the gaps over 40 days
    for lc in red.lightcurves:  # each light curve lies within one season, in time order
        mjd = np.asarray(lc.table["mjd"])
        assert np.all(np.diff(mjd) >= 0)
        assert sum(mjd.min() < (lo + hi) / 2 < mjd.max() for lo, hi in gaps) == 0
        assert lc.season == sum(mjd.min() > (lo + hi) / 2 for lo, hi in gaps)
    one = reduce_reply(table, ra_deg=STAR[0], dec_deg=STAR[1], config=ZtfConfig(season_gap_days=300))
    assert one.n_seasons == 1 and len(one.lightcurves) == 5


def test_distance_and_magnitude_cuts_name_what_they_leave_out(reply_bytes):
    table = parse_reply(reply_bytes)
    # 0.17 arcsec for the sparse zi object, 0.01-0.03 for the others (MANIFEST)
    red = reduce_reply(table, ra_deg=STAR[0], dec_deg=STAR[1], config=ZtfConfig(max_distance_arcsec=0.1))
    assert (
        list(red.rejected) == ["736315200051262"]
        and "arcsec from the target" in red.rejected["736315200051262"]
    )
    far = reduce_reply(table, ra_deg=STAR[0], dec_deg=STAR[1] + 2 / 3600, config=ZtfConfig())
    assert far.lightcurves == [] and len(far.rejected) == 5
    bright = reduce_reply(table, ra_deg=STAR[0], dec_deg=STAR[1], config=ZtfConfig(), catalogue_mag=17.0)
    assert bright.lightcurves == [] and all("vs catalogue 17.00" in r for r in bright.rejected.values())


def test_skip_rules_name_the_rule_and_the_values():
    cfg = ZtfConfig(dec_min_deg=-30.0, mag_band="G", mag_limit=21.5)
    assert skip_reason(cfg, dec_deg=-45.0, mag=18.0) == "skipped: Dec -45.00 deg south of dec_min_deg -30.0"
    assert skip_reason(cfg, dec_deg=10.0, mag=22.5) == "skipped: G = 22.50 fainter than mag_limit 21.50"
    for mag in (21.5, None, float("nan")):  # at the limit, or no magnitude known: asked
        assert skip_reason(cfg, dec_deg=-30.0, mag=mag) is None
    assert skip_reason(ZtfConfig(mag_band=None), dec_deg=10.0, mag=25.0) is None  # no magnitude rules


# --- the IRSA stand-in ---------------------------------------------------------------------------


class Irsa:
    """Answers like IRSA: the recorded reply near STAR, 500 then success at Dec +10, a stall at
    Dec +20, a header-only CSV elsewhere. Counts the requests per position."""

    def __init__(self, reply: bytes, stall_s: float = 2.0) -> None:
        self.reply = reply
        self.header = reply.splitlines()[0] + b"\n"
        self.stall_s = stall_s
        self.calls: dict[str, int] = {}
        self.auth: list[str | None] = []
        self.lock = threading.Lock()

    def __call__(self, request) -> Response:
        _, ra, dec, radius = request.args["POS"].split()
        ra, dec = float(ra), float(dec)
        with self.lock:
            key = f"{ra:.3f},{dec:.3f}"
            self.calls[key] = self.calls.get(key, 0) + 1
            n = self.calls[key]
            self.auth.append(request.headers.get("Authorization"))
        assert request.args["FORMAT"] == "CSV" and request.args["COLLECTION"] == "ztf_dr23"
        assert request.args["BANDNAME"] == "g,r,i" and float(radius) > 0
        if abs(ra - STAR[0]) < 1e-3 and abs(dec - STAR[1]) < 1e-3:
            return Response(self.reply, content_type="text/csv")
        if abs(dec - 10) < 1e-6:
            if n == 1:
                return Response("internal error", status=500)
            return Response(self.header, content_type="text/csv")
        if abs(dec - 20) < 1e-6:
            time.sleep(self.stall_s)
            return Response(self.header, content_type="text/csv")
        return Response(self.header, content_type="text/csv")


@pytest.fixture
def irsa_server():
    server = HTTPServer(threaded=True)
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


def _targets() -> Table:
    rows = [
        ("star", STAR[0], STAR[1], 20.3),
        ("flaky", 10.0, 10.0, 18.0),
        ("stall", 20.0, 20.0, 18.0),
        ("south", 30.0, -45.0, 18.0),
        ("faint", 31.0, 30.0, 22.5),
    ] + [(f"none{i}", 40.0 + i, 30.0, 19.0) for i in range(5)]
    t = Table(rows=rows, names=("name", "ra_deg", "dec_deg", "mag_G"))
    for col in ("epoch_jyear", "parallax_mas"):
        t[col] = np.nan
    t["pmra_masyr"] = 0.0
    t["pmdec_masyr"] = 0.0
    return t


def _config(tmp_path, url: str) -> SurveysConfig:
    return SurveysConfig.model_validate(
        {
            "cache_dir": str(tmp_path / "cache"),
            "ztf": {
                "base_url": url,
                "http": {
                    "timeout_s": 0.5,
                    "max_attempts": 2,
                    "backoff_s": 0.05,
                    "concurrency": 4,
                    "rate_per_s": 500,
                },
            },
        }
    )


@pytest.fixture
def survey_repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    registry = Registry(f"sqlite:///{root / 'registry.db'}")
    registry.upgrade()
    import_targets(registry, _targets(), catalog="test")
    yield root, registry
    registry.dispose()


def test_every_target_fetched_retried_timed_out_and_empty_not_asked_again(
    tmp_path, irsa_server, survey_repo, reply_bytes
):
    root, registry = survey_repo
    irsa = Irsa(reply_bytes)
    irsa_server.expect_request("/cgi-bin/ZTF/nph_light_curves").respond_with_handler(irsa)
    config = _config(tmp_path, irsa_server.url_for("/"))
    report = run_ztf(root, registry, config)
    assert report.counts == {"done": 1, "empty": 8, "failed": 1}, report
    with registry.session() as s:
        rows = {d.key.split("/")[1].split("@")[0]: d for d in s.scalars(select(Download))}
        lcs = list(s.scalars(select(Lightcurve)))
        star_id = s.scalar(select(Target.id).where(Target.name == "star"))
    assert rows["stall"].state == "failed" and rows["stall"].reason == "timed out after 0.5 s (2 attempts)"
    assert rows["flaky"].state == "empty" and rows["flaky"].meta["attempts"] == 2  # the 500 retried
    assert irsa.calls["10.000,10.000"] == 2
    assert rows["south"].reason.startswith("skipped: Dec -45.00") and rows["faint"].reason.startswith(
        "skipped: G = 22.50"
    )
    assert all(rows[f"none{i}"].reason == "no ZTF epochs within the cone" for i in range(5))
    # the raw reply kept byte for byte, binned by integer RA degree
    star = rows["star"]
    assert star.state == "done" and star.n_rows == 1852
    assert (
        star.sha256
        == hashlib.sha256(reply_bytes).hexdigest()
        == hashlib.sha256(Path(star.path).read_bytes()).hexdigest()
    )
    assert "/ztf/ztf_dr23/ra359/" in star.path
    empty_raw = Path(rows["none0"].path).read_bytes()
    assert empty_raw == reply_bytes.splitlines()[0] + b"\n" and "/ra040/" in rows["none0"].path
    # light curves registered: 5 object ids, 4 seasons, 51 flagged epochs, files as recorded
    assert {lc.object_id for lc in lcs} == {
        "736115200001082",
        "736215200001589",
        "736315200051262",
        "805101300013289",
        "805201300017324",
    }
    assert {lc.season for lc in lcs} == {"0", "1", "2", "3"}
    assert sum(lc.n_flagged for lc in lcs) == 51 and sum(lc.n_points for lc in lcs) == 1852
    assert all(lc.target_id == star_id and lc.time_scale == "utc" for lc in lcs)
    for lc in lcs:
        path = root / lc.path
        assert hashlib.sha256(path.read_bytes()).hexdigest() == lc.sha256
    table = read_lc_file(root / lcs[0].path)  # the analysis package's reader and format
    assert {"mjd", "mag", "magerr", "band", "catflags", "ra", "dec", "oid"} <= set(table.colnames)
    assert len(table) == lcs[0].n_points and table.meta["time_scale"] == "utc"
    assert table.meta["object"] == lcs[0].object_id and str(table["oid"][0]) == lcs[0].object_id
    assert int(np.sum(table["catflags"] != 0)) == lcs[0].n_flagged

    # second run: done and empty targets are not asked again; the failed one is retried as a new
    # unit of work (a runner that remembers done units by key asks again too)
    with registry.session() as s:
        planned = ZtfDownloader(root, config).plan(s)
    assert [u.key for u in planned] == ["test/stall@ztf_dr23 (retry 1)"]
    before = dict(irsa.calls)
    irsa.stall_s = 0.0
    again = run_ztf(root, registry, config)
    assert again.n_planned == 1 and again.counts == {"empty": 1}
    changed = {k: v - before.get(k, 0) for k, v in irsa.calls.items() if v != before.get(k, 0)}
    assert changed == {"20.000,20.000": 1}
    with registry.session() as s:
        assert s.query(Download).count() == 10  # one row per target, updated in place
    # --refresh asks everyone again (skip rules still apply)
    n_before = sum(irsa.calls.values())
    refreshed = run_ztf(root, registry, config, refresh=True)
    assert refreshed.n_planned == 10 and sum(irsa.calls.values()) - n_before == 8
    with registry.session() as s:
        assert s.query(Lightcurve).count() == len(lcs)  # replaced, not duplicated


def test_critical_parameter_gives_light_curves_beside_the_old_and_command_records_runs_provenance(
    tmp_path, irsa_server, survey_repo, reply_bytes
):
    root, registry = survey_repo
    irsa = Irsa(reply_bytes, stall_s=0.0)
    irsa_server.expect_request("/cgi-bin/ZTF/nph_light_curves").respond_with_handler(irsa)
    config = _config(tmp_path, irsa_server.url_for("/"))

    def stage_provenance(surveys: SurveysConfig) -> str:
        """The ztf provenance ``darkroom run`` would use (the declared stages)."""
        full = DarkroomConfig.model_validate({"surveys": surveys.model_dump(mode="json")})
        return {st.name: st.provenance_id for st in build_stages(root, full)}["ztf"]

    def lightcurves() -> dict[str, list[Lightcurve]]:
        with registry.session() as s:
            out: dict[str, list[Lightcurve]] = {}
            for lc in s.scalars(select(Lightcurve)):
                out.setdefault(lc.provenance_id, []).append(lc)
            return out

    assert run_ztf(root, registry, config).counts == {"done": 1, "empty": 9}
    old = stage_provenance(config)
    with registry.session() as s:
        assert list(s.scalars(select(Provenance.id).where(Provenance.stage == "ztf"))) == [old]
    n_old = len(lightcurves()[old])
    n_calls = sum(irsa.calls.values())

    # not critical (how fast to ask, whether to fsync, which mirror): the same provenance, nothing to do
    calm = config.model_copy(deep=True)
    calm.fsync = False
    calm.ztf.http.concurrency = 1
    calm.ztf.base_url = irsa_server.url_for("/mirror/")
    assert stage_provenance(calm) == old == ZtfDownloader(root, calm).provenance_id
    assert run_ztf(root, registry, calm).n_planned == 0

    # critical (how the reply is cut into seasons): a new provenance, its light curves beside the old
    # ones (rows and files), every target reduced again from the cached replies (no new request)
    wide = config.model_copy(deep=True)
    wide.ztf.season_gap_days = 4000.0
    new = stage_provenance(wide)
    assert new != old
    report = run_ztf(root, registry, wide)
    assert report.n_planned == 10 and report.counts == {"done": 1, "empty": 9}
    assert sum(irsa.calls.values()) == n_calls
    by_prov = lightcurves()
    assert set(by_prov) == {old, new} and len(by_prov[old]) == n_old
    assert {lc.season for lc in by_prov[new]} == {"0"} and sum(lc.n_points for lc in by_prov[new]) == 1852
    files = {p: [root / lc.path for lc in lcs] for p, lcs in by_prov.items()}
    assert all(p.is_file() and prov in str(p) for prov, paths in files.items() for p in paths)
    with registry.session() as s:
        assert set(s.scalars(select(Provenance.id).where(Provenance.stage == "ztf"))) == {old, new}
        assert len(survey_lightcurves(s, root, name="star", provenance=old)) == 1852
        current = survey_lightcurves(s, root, name="star", current={"ztf": new})
        assert len(current) == 1852 and set(current["season"]) == {"0"}  # the old ones do not enter twice

    # --redo of the new provenance removes only its rows and files
    with registry.session() as s:
        ZtfDownloader(root, wide).forget(s)
    assert set(lightcurves()) == {old}
    assert not any(p.exists() for p in files[new]) and all(p.is_file() for p in files[old])
    assert run_ztf(root, registry, wide).n_planned == 10  # and it is asked again


def test_credentials_sent_never_stored_or_logged(
    tmp_path, irsa_server, survey_repo, reply_bytes, monkeypatch, caplog
):
    root, registry = survey_repo
    irsa = Irsa(reply_bytes)
    irsa_server.expect_request("/cgi-bin/ZTF/nph_light_curves").respond_with_handler(irsa)
    secret = "s3cret-Pa55word"
    monkeypatch.setenv("DARKROOM_IRSA_USER", "alice")
    monkeypatch.setenv("DARKROOM_IRSA_PASSWORD", secret)
    config = _config(tmp_path, irsa_server.url_for("/"))
    with caplog.at_level("DEBUG"):
        run_ztf(root, registry, config, limit=2)
    expected = "Basic " + base64.b64encode(f"alice:{secret}".encode()).decode()
    assert irsa.auth and all(a == expected for a in irsa.auth)
    assert secret not in caplog.text
    registry.dispose()
    for path in [*root.rglob("*"), *(tmp_path / "cache").rglob("*")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in repr(load_credentials())


def test_credentials_file_must_be_private(tmp_path, monkeypatch):
    monkeypatch.delenv("DARKROOM_IRSA_USER", raising=False)
    path = tmp_path / "irsa"
    path.write_text("bob:hunter2\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others") as info:
        load_credentials(file=path)
    assert "hunter2" not in str(info.value)
    path.chmod(0o600)
    creds = load_credentials(file=path)
    assert creds.user == "bob" and creds.password == "hunter2" and "hunter2" not in repr(creds)


@pytest.mark.slow
def test_cli_import_run_and_status_on_a_survey_repository(tmp_path, irsa_server, reply_bytes):
    from typer.testing import CliRunner

    from darkroom.cli import app

    irsa = Irsa(reply_bytes, stall_s=0.0)
    irsa_server.expect_request("/cgi-bin/ZTF/nph_light_curves").respond_with_handler(irsa)
    repo = tmp_path / "wd"
    targets = _targets()
    targets.rename_columns(["name", "ra_deg", "dec_deg", "mag_G"], ["Source", "RA", "DEC", "gmag"])
    targets[["Source", "RA", "DEC", "gmag"]].write(tmp_path / "mine.ecsv")
    runner = CliRunner()
    sets = [
        "--set", "surveys.run=[ztf]",
        "--set", f"surveys.cache_dir={tmp_path / 'cache'}",
        "--set", f"surveys.ztf.base_url={irsa_server.url_for('/')}",
        "--set", "surveys.ztf.http.rate_per_s=1000",
    ]  # fmt: skip
    assert runner.invoke(app, ["init", str(repo), *sets]).exit_code == 0
    res = runner.invoke(
        app,
        [
            "targets",
            "import",
            str(repo),
            str(tmp_path / "mine.ecsv"),
            "--columns",
            "name=Source,ra=RA,dec=DEC,mag.G=gmag",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "10 targets read, 10 registered" in res.output
    again = runner.invoke(
        app,
        [
            "targets",
            "import",
            str(repo),
            str(tmp_path / "mine.ecsv"),
            "--columns",
            "name=Source,ra=RA,dec=DEC",
        ],
    )
    assert "0 registered, 10 already known" in again.output
    res = runner.invoke(app, ["run", str(repo), "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["status", str(repo)])
    flat = "".join(res.output.split())  # rich wraps titles and cells to the table width
    assert "surveydownloads(10targetsregistered)" in flat
    assert "noZTFepochswithinthecone" in flat and "skipped:Dec-45.00" in flat
    with Registry(f"sqlite:///{repo / 'registry.db'}").session() as s:
        states = dict(s.execute(select(Download.state, func.count()).group_by(Download.state)).all())
    assert states == {"done": 1, "empty": 9}
    res = runner.invoke(app, ["survey", "ztf", str(repo)])  # nothing left to ask
    assert res.exit_code == 0 and "ztf: 0 targets" in res.output

    res = runner.invoke(
        app,
        [
            "lightcurve",
            str(repo),
            "--name",
            "star",
            "-o",
            str(tmp_path / "star.ecsv"),
            "--plot",
            str(tmp_path / "star.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    stacked = Table.read(tmp_path / "star.ecsv")
    assert len(stacked) == 1852 and np.all(np.diff(stacked["mjd"]) >= 0)
    assert set(stacked["season"]) == {"0", "1", "2", "3"} and int(np.sum(stacked["catflags"] != 0)) == 51
    assert (tmp_path / "star.png").stat().st_size > 10_000
