"""Kill -9 during a 2,000-target ZTF download against a local stand-in, then resume: every target
ends done, empty or failed exactly once, nothing duplicated, no half-written file."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from pytest_httpserver import HTTPServer
from sqlalchemy import func, select
from werkzeug import Response

import darkroom
from darkroom.facade import Repository
from darkroom.io.atomic import TEMP_PREFIX
from darkroom.pipeline.survey_targets import import_targets
from darkroom.pipeline.ztf import run_ztf
from darkroom.repo.models import Download, Lightcurve

N_TARGETS = 2000
HEADER = "oid,expid,hjd,mjd,mag,magerr,catflags,filtercode,ra,dec,exptime\n"


def _expected(i: int) -> str:
    """What the stand-in does for target i: a 400 (failed), a tiny reply (done) or no rows (empty)."""
    if i % 97 == 0:
        return "failed"
    return "done" if i % 2 == 0 else "empty"


def _handler(request) -> Response:
    _, ra, dec, _ = request.args["POS"].split()
    i = round(float(dec) * 1000)  # target i sits at Dec i/1000
    state = _expected(i)
    if state == "failed":
        return Response("bad position", status=400)
    if state == "empty":
        return Response(HEADER, content_type="text/csv")
    rows = "".join(
        f"{900000000 + i},{k},0,{58300.0 + 10 * k:.5f},{18 + 0.01 * k:.3f},0.05,{k % 2 * 4},zg,{ra},{dec},30\n"
        for k in range(3)
    )
    return Response(HEADER + rows, content_type="text/csv")


@pytest.fixture
def server():
    srv = HTTPServer(threaded=True)
    srv.start()
    srv.expect_request("/cgi-bin/ZTF/nph_light_curves").respond_with_handler(_handler)
    yield srv
    srv.clear()
    if srv.is_running():
        srv.stop()


@pytest.mark.slow
def test_kill_9_mid_download_then_resume(tmp_path, server):
    root, cache = tmp_path / "repo", tmp_path / "cache"
    overrides = [
        f"surveys.cache_dir={cache}",
        f"surveys.ztf.base_url={server.url_for('/')}",
        "surveys.ztf.mag_band=null",
        "surveys.ztf.http.concurrency=16",
        "surveys.ztf.http.rate_per_s=100000",
        "surveys.ztf.http.timeout_s=10",
        "surveys.ztf.http.max_attempts=1",
        "surveys.fsync=false",  # a kill -9 needs no fsync to leave whole files (atomic renames)
    ]
    repo = Repository.init(root, overrides=overrides)
    t = Table()
    t["name"] = [f"t{i:04d}" for i in range(N_TARGETS)]
    t["ra_deg"] = np.linspace(0, 359, N_TARGETS)
    t["dec_deg"] = np.arange(N_TARGETS) / 1000.0
    for col in ("epoch_jyear", "parallax_mas"):
        t[col] = np.nan
    t["pmra_masyr"] = 0.0
    t["pmdec_masyr"] = 0.0
    assert import_targets(repo.registry, t, catalog="kill") == (N_TARGETS, 0)
    repo.close()

    env = dict(os.environ, PYTHONPATH=str(Path(darkroom.__file__).parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "darkroom.cli", "survey", "ztf", str(root), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    n_rows, deadline = 0, time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(root / "registry.db", timeout=5) as conn:
                n_rows = conn.execute("select count(*) from download").fetchone()[0]
        except sqlite3.OperationalError:
            n_rows = 0
        if n_rows >= 300:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(root / "registry.db") as conn:
        at_kill = conn.execute("select count(*) from download").fetchone()[0]
        settled = conn.execute("select count(*) from download where state != 'failed'").fetchone()[0]
    assert 300 <= at_kill < N_TARGETS  # killed mid-run

    repo = Repository(root)
    report = run_ztf(repo.root, repo.registry, repo.config.surveys)
    assert report.n_planned == N_TARGETS - settled  # failed ones are asked again
    with repo.registry.session() as s:
        rows = s.execute(
            select(Download.key, Download.state, Download.reason, Download.path, Download.sha256)
        ).all()
        lcs = s.execute(
            select(Lightcurve.target_id, Lightcurve.key, Lightcurve.path, Lightcurve.sha256)
        ).all()
        n_distinct = s.scalar(select(func.count(func.distinct(Download.key))))
    repo.close()
    # every target exactly once, in the state the stand-in gave it
    assert len(rows) == n_distinct == N_TARGETS
    states = {key.split("/")[1].split("@")[0]: (state, reason) for key, state, reason, _, _ in rows}
    for i in range(N_TARGETS):
        state, reason = states[f"t{i:04d}"]
        assert state == _expected(i), (i, state, reason)
        if state == "failed":
            assert reason == "HTTP 400 BAD REQUEST"
    # light curves: one per done target, no duplicate, every file whole and as recorded
    n_done = sum(_expected(i) == "done" for i in range(N_TARGETS))
    assert len(lcs) == n_done and len({lc.target_id for lc in lcs}) == n_done
    for lc in lcs:
        assert hashlib.sha256((root / lc.path).read_bytes()).hexdigest() == lc.sha256
    on_disk = list((root / "lightcurves").rglob("*.parquet"))
    assert len(on_disk) == n_done
    for _key, state, _reason, path, sha in rows:
        if state != "failed":
            assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha
    assert not [p for p in [*root.rglob(f"{TEMP_PREFIX}*"), *cache.rglob(f"{TEMP_PREFIX}*")]]
