"""``darkroom analyze`` on Dask and after a crash: the same properties, detections and injection
rows, and the same searched-epoch histograms, whether the objects run serially, on two Dask
workers, or in a run killed with SIGKILL midway and then resumed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr
from sqlalchemy import select
from typer.testing import CliRunner

import darkroom
from darkroom.cli import app
from darkroom.facade import Repository
from darkroom.pipeline.analysis import analyze
from darkroom.pipeline.executors import DaskExecutor
from darkroom.pipeline.local_workers import LocalWorkersExecutor
from darkroom.repo.models import Detection, Injection, Properties
from darkroom.testing import shared_data_dir

KA = shared_data_dir() / "lightcurve-known-answers"
IRSA = shared_data_dir() / "ztf-irsa-lightcurve" / "ZTF_lightcurve.csv"
NONVAR = sorted((KA / "nonvariable-ztf").glob("*.csv"))
#: real ZTF SN Ia light curves (bands g and R, ~16 epochs each): many small objects
SNIA = sorted((KA / "snia" / "light-curves").glob("*.csv"))[:64]
#: a coarser bank of event durations (x3 steps, not x1.5) halves the matched filter's time
FAST = ("--set", "analysis.transient.duration_step=3.0")


def _repo(path: Path, files: list[Path], survey: str, settings: tuple[str, ...] = ()) -> Path:
    runner = CliRunner()
    assert runner.invoke(app, ["init", str(path), *settings]).exit_code == 0
    res = runner.invoke(app, ["lightcurves", "import", str(path), *map(str, files), "--survey", survey])
    assert res.exit_code == 0 and " 0 files skipped" in res.output, res.output
    return path


def _j(value) -> str:
    return json.dumps(value, sort_keys=True)


def _rows(root: Path) -> dict[str, list[tuple]]:
    """Every analysis row, as comparable values (registry ids of injections and detections,
    which a PostgreSQL sequence need not reproduce after a crash, replaced by their content)."""
    repo = Repository(root)
    with repo.registry.session() as s:
        props = s.scalars(select(Properties)).all()
        dets = s.scalars(select(Detection)).all()
        injs = s.scalars(select(Injection)).all()
        inj_by_id = {i.id: (i.lightcurve_id, i.kind, i.mjd_peak) for i in injs}
        det_by_id = {d.id: (d.lightcurve_id, d.mjd, d.snr) for d in dets}
        out = {
            "properties": sorted(
                (p.provenance_id, p.object_key, p.target_id, p.n_epochs, p.period_d, p.period_fap,
                 p.best_snr, _j(p.values))
                for p in props
            ),
            "detections": sorted(
                (d.provenance_id, d.finder, d.lightcurve_id, d.target_id, d.mjd, d.duration_d,
                 d.peak_mag, d.snr, d.score, d.simulated, _j(d.meta),
                 _j(inj_by_id[d.injection_id]) if d.injection_id else "")
                for d in dets
            ),
            "injections": sorted(
                (i.provenance_id, i.lightcurve_id, i.kind, i.mjd_peak, i.duration_d, i.peak_mag, i.snr,
                 _j(i.params), i.recovered, _j(det_by_id[i.detection_id]) if i.detection_id else "")
                for i in injs
            ),
        }  # fmt: skip
    repo.close()
    return out


def _histograms(root: Path) -> xr.Dataset:
    (nc,) = (root / "analysis").glob("*/searched.nc")
    return xr.load_dataset(nc, engine="h5netcdf")


@pytest.mark.parametrize("kind", ["dask", "processes"])
def test_serial_and_two_workers_write_the_same_rows(tmp_path, kind):
    # the three non-variables and the IRSA reply (4 objects, 9 light curves), one injection each;
    # one object per batch, so both workers compute and finish out of order (FAST: the matched
    # filter on the IRSA reply's ~1700 epochs is most of the time otherwise). "processes": the
    # local workers of `darkroom analyze --workers 2`; "dask": a local Dask cluster
    files, settings = [*NONVAR, IRSA], FAST
    serial = _repo(tmp_path / "serial", files, "ztf", settings)
    dask = _repo(tmp_path / "dask", files, "ztf", settings)
    res = CliRunner().invoke(app, ["analyze", str(serial), "--injections", "1", "--workers", "1"])
    assert res.exit_code == 0 and "4 objects analysed" in res.output, res.output
    repo = Repository(dask)
    executor = (
        DaskExecutor(n_workers=2, batch_size=1) if kind == "dask" else LocalWorkersExecutor(2, batch_size=1)
    )
    try:
        rep = analyze(
            repo.registry, repo.root, repo.config.analysis, injections=1, executor=executor, serial_below=0
        )
        if kind == "dask":
            n_workers = len(executor.client.scheduler_info()["workers"])
        else:
            n_workers = len(executor.worker_pids())
    finally:
        executor.close()
        repo.close()
    assert rep.executor == kind and n_workers == 2 and rep.n_objects == 4 and not rep.failures
    a, b = _rows(serial), _rows(dask)
    assert len(a["properties"]) == 4 and len(a["injections"]) == 9
    assert {r[-1] != "" for r in a["injections"]} == {True, False}  # some recovered, some not
    assert a == b
    assert _histograms(serial).identical(_histograms(dask))


def test_sigkill_midway_then_resume_equals_an_uninterrupted_run(tmp_path):
    # 64 SN Ia objects with one injection per light curve. The reference runs uninterrupted; the
    # other is killed (SIGKILL) once a batch is committed, then resumed on two Dask workers.
    ref, crash = _repo(tmp_path / "ref", SNIA, "snia", FAST), _repo(tmp_path / "crash", SNIA, "snia", FAST)
    repo = Repository(ref)
    full = analyze(repo.registry, repo.root, repo.config.analysis, injections=1)
    repo.close()
    assert full.n_objects == len(SNIA) and not full.failures

    env = dict(os.environ, PYTHONPATH=str(Path(darkroom.__file__).parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "darkroom.cli", "analyze", str(crash), "--injections", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    n_rows, deadline = 0, time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(crash / "registry.db", timeout=5) as conn:
                n_rows = conn.execute("select count(*) from properties").fetchone()[0]
        except sqlite3.OperationalError:
            n_rows = 0
        if n_rows > 0:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(crash / "registry.db") as conn:
        at_kill = conn.execute("select count(*) from properties").fetchone()[0]
        n_inj = conn.execute("select count(*) from injection").fetchone()[0]
        n_inj_done = conn.execute(
            "select count(*) from injection i join lightcurve l on l.id = i.lightcurve_id"
            " join properties p on p.object_key = l.survey || ':' || l.object_id"
        ).fetchone()[0]
    assert 0 < at_kill < len(SNIA)  # killed midway, with something committed
    assert n_inj == n_inj_done  # no injection row of an object without its properties row

    repo = Repository(crash)
    executor = DaskExecutor(n_workers=2, batch_size=2)
    try:
        rep = analyze(
            repo.registry, repo.root, repo.config.analysis, injections=1, executor=executor, serial_below=0
        )
    finally:
        executor.close()
        repo.close()
    assert rep.executor == "dask" and not rep.failures
    assert (rep.n_skipped, rep.n_objects) == (at_kill, len(SNIA) - at_kill)
    assert rep.n_injections + n_inj == full.n_injections
    assert _rows(crash) == _rows(ref)
    assert _histograms(crash).identical(_histograms(ref))
