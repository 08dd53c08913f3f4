"""`darkroom run`: all stages in order, resumable, crash-safe under SIGKILL, cron-friendly."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from darkroom.cli import app
from darkroom.pipeline.products import image_products
from darkroom.repo.models import (
    AstromSolution,
    Calib,
    CalibInput,
    Exposure,
    Image,
    Measurement,
    Source,
    Task,
)
from darkroom.repo.registry import Registry
from darkroom.repo.store import TEMP_PREFIX, sha256_file
from darkroom.sim import SimConfig, simulate_night

runner = CliRunner()
PRODUCT_DIRS = ("calib", "images", "catalogs", "lightcurves", "products")


@pytest.fixture(scope="module")
def sim_raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("simnight")
    night = simulate_night(out, config=SimConfig(seed=11, n_science=8, shape=(384, 384), n_stars=250))
    return night.raw_paths["light"][0].parent


def snapshot(root: Path, url: str | None = None) -> dict:
    """Everything a run leaves behind, minus ids and timestamps."""
    files = {
        str(p.relative_to(root)): sha256_file(p)
        for d in PRODUCT_DIRS
        for p in sorted((root / d).rglob("*"))
        if p.is_file()
    }
    reg = Registry(url or f"sqlite:///{root / 'registry.db'}")
    with reg.session() as s:
        exposures = sorted(s.execute(sa.select(Exposure.sha256, Exposure.state, Exposure.reason)).all())
        calibs = sorted(
            s.execute(
                sa.select(Calib.kind, Calib.group_key, Calib.night, Calib.path, Calib.sha256, Calib.n_inputs)
            ).all()
        )
        n_inputs = s.scalar(sa.select(sa.func.count()).select_from(CalibInput))
        sha = dict(s.execute(sa.select(Exposure.id, Exposure.sha256)).all())
        image_sha = {i: sha[e] for i, e in s.execute(sa.select(Image.id, Image.exposure_id)).all()}

        def without_ids(value) -> str:
            # Image ids follow the order drivers record in (two drivers at once differ):
            # name the reference image by its raw file's checksum instead.
            text = json.dumps(value, sort_keys=True)
            text = re.sub(r'("reference_image_id": )(\d+)', lambda m: f'{m[1]}"{image_sha[int(m[2])]}"', text)
            return text

        images = sorted(
            (
                sha[ip.exposure_id],
                ip.image.provenance_id,
                ip.path,
                ip.image.sha256,
                ip.catalog_path,
                ip.quality_flag,
                ip.astrom_flag,
                *(without_ids(j) for j in (ip.quality, ip.astrom, ip.photcal)),
            )
            for ip in image_products(s, None, only_ok=False)
        )
        tasks = sorted(s.execute(sa.select(Task.stage, Task.key, Task.provenance_id, Task.state)).all())
        n_sources = s.scalar(sa.select(sa.func.count()).select_from(Source))
        measurements = sorted(
            s.execute(
                sa.select(Exposure.sha256, Measurement.source_id, Measurement.flux, Measurement.flags)
                .join(Image, Measurement.image_id == Image.id)
                .join(Exposure, Image.exposure_id == Exposure.id)
            ).all()
        )
    reg.dispose()
    return {
        "files": files,
        "exposures": exposures,
        "calibs": calibs,
        "n_inputs": n_inputs,
        "images": images,
        "tasks": tasks,
        "n_sources": n_sources,
        "measurements": measurements,
    }


def _paths_in(value) -> set[str]:
    """Every product path named anywhere in a JSON value."""
    if isinstance(value, dict):
        return set().union(*(_paths_in(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_paths_in(v) for v in value)) if value else set()
    if isinstance(value, str) and value.split("/", 1)[0] in PRODUCT_DIRS and "." in value.rsplit("/", 1)[-1]:
        return {value}
    return set()


def _init(root: Path) -> None:
    res = runner.invoke(app, ["init", str(root)])
    assert res.exit_code == 0, res.output


def test_run_all_then_nothing_then_redo(tmp_path, sim_raw):
    root = tmp_path / "repo"
    _init(root)
    res = runner.invoke(app, ["run", str(root), "--ingest", str(sim_raw), "-q"])
    assert res.exit_code == 0, res.output
    first = snapshot(root)
    assert len(first["images"]) == 8 and {t[3] for t in first["tasks"]} == {"done"}
    # the field is named by its first frame's exposure, which ingest numbers, not by an image row,
    # which drivers number in the order they record (two drivers at once: another order)
    reg = Registry(f"sqlite:///{root / 'registry.db'}")
    with reg.session() as s:
        keys = {v["field_key"] for v in s.scalars(sa.select(AstromSolution.values))}
        first_light = s.scalars(
            sa.select(Image.exposure_id)
            .join(Exposure, Image.exposure_id == Exposure.id)
            .order_by(Exposure.mjd_mid)
        ).first()
    reg.dispose()
    assert len(keys) == 1 and keys.pop().rsplit("|", 1)[1] == str(first_light)
    again = runner.invoke(app, ["run", str(root)])
    assert again.exit_code == 0
    assert snapshot(root) == first
    redo = runner.invoke(app, ["run", str(root), "--redo", "bad_pixels", "-q"])
    assert redo.exit_code == 0, redo.output
    assert snapshot(root) == first  # same provenance, same bytes, same rows
    until = runner.invoke(app, ["run", str(root), "--until", "nope"])
    assert until.exit_code == 1 and "no such stage" in until.output


def test_critical_parameter_gives_new_products_beside_old(tmp_path, sim_raw):
    root = tmp_path / "repo"
    _init(root)
    assert runner.invoke(app, ["run", str(root), "--ingest", str(sim_raw), "-q"]).exit_code == 0
    before = snapshot(root)
    res = runner.invoke(app, ["run", str(root), "-q", "--set", "calib.masters.bias.n_sigma_high=4.0"])
    assert res.exit_code == 0, res.output
    after = snapshot(root)
    assert set(before["files"]).issubset(after["files"])  # nothing overwritten or removed
    assert all(after["files"][k] == v for k, v in before["files"].items())
    assert len(after["images"]) == 16 and len(after["calibs"]) == 2 * len(before["calibs"])


def test_only_and_until(tmp_path, sim_raw):
    root = tmp_path / "repo"
    _init(root)
    res = runner.invoke(app, ["run", str(root), "--ingest", str(sim_raw), "--until", "master_dark", "-q"])
    assert res.exit_code == 0, res.output
    snap = snapshot(root)
    assert {c[0] for c in snap["calibs"]} == {"bias", "dark"} and not snap["images"]
    res = runner.invoke(app, ["run", str(root), "--only", "master_flat", "-q"])
    assert {c[0] for c in snapshot(root)["calibs"]} == {"bias", "dark", "flat"}


def _n_claims(root: Path) -> int:
    """How many times units have been claimed so far (sum of task attempts), read without locking."""
    import sqlite3

    db = root / "registry.db"
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        try:
            return int(conn.execute("select coalesce(sum(attempts), 0) from task").fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0


def _darkroom(*args: str) -> list[str]:
    return [sys.executable, "-m", "darkroom.cli", *args]


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path, sim_raw):
    reference = tmp_path / "reference"
    _init(reference)
    subprocess.run(_darkroom("run", str(reference), "--ingest", str(sim_raw), "-q"), check=True, timeout=600)
    expected = snapshot(reference)

    root = tmp_path / "killed"
    _init(root)
    subprocess.run(_darkroom("ingest", str(root), str(sim_raw), "-q"), check=True, timeout=300)
    rng = random.Random(7)
    kills = 0
    attempts = 0
    while kills < 6 and attempts < 40:
        attempts += 1
        started = _n_claims(root)
        proc = subprocess.Popen(
            _darkroom("run", str(root), "-q"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # Wait until this run has claimed a unit (it is inside the stages, not importing),
        # then kill it a random moment later: mid-computation, mid-write or mid-commit.
        while proc.poll() is None and _n_claims(root) == started:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if proc.returncode == 0:  # the run finished before the kill: nothing left to interrupt
            break
    assert kills >= 5, f"only {kills} kills landed mid-run"
    final = subprocess.run(_darkroom("run", str(root), "-q"), timeout=600)
    assert final.returncode == 0
    got = snapshot(root)
    assert got == expected
    assert not list(root.rglob(f"{TEMP_PREFIX}*")), "orphan temporary files"
    recorded = {c[3] for c in got["calibs"]} | {i[2] for i in got["images"]} | {i[4] for i in got["images"]}
    for image in got["images"]:
        for blob in image[7:]:
            recorded |= _paths_in(json.loads(blob))
    assert recorded == set(got["files"]), "product files without rows, or rows without files"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_runs_at_once_on_postgresql_share_the_work(tmp_path, sim_raw, db_url):
    reference = tmp_path / "reference"
    _init(reference)
    assert runner.invoke(app, ["run", str(reference), "--ingest", str(sim_raw), "-q"]).exit_code == 0
    expected = snapshot(reference)

    root = tmp_path / "pg"
    assert runner.invoke(app, ["init", str(root), "--db", db_url]).exit_code == 0
    assert not (root / "registry.db").exists()
    subprocess.run(_darkroom("ingest", str(root), str(sim_raw), "-q"), check=True, timeout=300)
    procs = [
        subprocess.Popen(_darkroom("run", str(root), "-q"), stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    got = snapshot(root, db_url)
    assert got["files"] == expected["files"]
    for key in ("exposures", "calibs", "n_inputs", "images", "tasks"):
        assert got[key] == expected[key], key
    reg = Registry(db_url)
    with reg.session() as s:
        attempts = s.scalars(sa.select(Task.attempts)).all()
    reg.dispose()
    assert attempts and set(attempts) == {1}, "a unit was claimed twice"


def test_two_local_workers_equal_serial(tmp_path, sim_raw):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    for root in (serial, parallel):
        _init(root)
    assert runner.invoke(app, ["run", str(serial), "--ingest", str(sim_raw), "-q"]).exit_code == 0
    res = subprocess.run(
        _darkroom("run", str(parallel), "--ingest", str(sim_raw), "-q", "--workers", "2"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert snapshot(parallel) == snapshot(serial)


def test_a_hostile_night_on_two_local_workers_equals_serial(tmp_path):
    """The second night for the workers: the hostile small telescope's preset (no type keyword, no
    calibration frames, no gain, undersampled stars, a drifting field, a west-positive longitude),
    with a truncated frame among its files, gives the same files and rows on two local workers as
    serially: the quarantine, the light frames inferred, every frame calibrated without masters."""
    from darkroom.sim import hostile_small_telescope

    night = simulate_night(tmp_path / "sim", hostile_small_telescope(n_science=16))
    raw = night.raw_paths["light"][0].parent
    whole = night.raw_paths["light"][3].read_bytes()
    (raw / "cut_short.fits").write_bytes(whole[: len(whole) // 2])
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    for root in (serial, parallel):
        _init(root)
    # the simulated sky is in no index: blind solving would spend solve-field's CPU limit (60 s)
    # before the frames are aligned to one another, which they are either way
    no_blind = ("--set", "astrometry.solve.blind.engine=none")
    assert runner.invoke(app, ["run", str(serial), "--ingest", str(raw), "-q", *no_blind]).exit_code == 0
    res = subprocess.run(
        _darkroom("run", str(parallel), "--ingest", str(raw), "-q", "--workers", "2", *no_blind),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got, expected = snapshot(parallel), snapshot(serial)
    assert got == expected
    states = [state for _, state, _ in expected["exposures"]]
    assert states.count("quarantined") == 1 and states.count("ok") == 16
    assert len(expected["images"]) == 16 and expected["files"]


def test_frames_kept_from_ingest_give_the_products_of_frames_read_again(tmp_path, sim_raw):
    """A serial `run --ingest` decompresses and parses each raw file once: the masters and calibrate
    take what ingest kept (darkroom.io.keep), and make what reading the files again makes."""
    from darkroom.facade import Repository
    from darkroom.pipeline.drive import drive_stages, raw_frames_kept
    from darkroom.pipeline.ingest import ingest_paths
    from darkroom.pipeline.run import all_stages

    n_files = len(list(sim_raw.glob("*.fits")))
    counts = {}
    for name, budget in (("kept", 512.0), ("read_again", 0.0)):
        repo = Repository.init(tmp_path / name)
        cfg = repo.config.ingest.model_copy(update={"keep_in_memory_mb": budget})
        with raw_frames_kept(cfg, serial=True) as keeper:
            ingest_paths(repo.registry, [sim_raw], config=cfg)
            reports = drive_stages(repo.registry, all_stages(repo.root, repo.config), quiet=True)
            if keeper is not None:
                counts = {"kept": keeper.n_kept, "taken": keeper.n_taken, "held": keeper.held_bytes}
        assert not [r for r in reports if r.n_failed]
        repo.close()
    # every frame was kept by ingest and taken once (by a master or calibrate), nothing is left
    assert counts == {"kept": n_files, "taken": n_files, "held": 0}
    assert snapshot(tmp_path / "kept") == snapshot(tmp_path / "read_again")


def test_cron_style_ingest_processes_only_what_is_new(tmp_path, sim_raw):
    first_half = tmp_path / "incoming"
    first_half.mkdir()
    lights = sorted(sim_raw.glob("SIM-1b_*.fits"))
    for p in sorted(sim_raw.glob("*.fits")):
        if p not in lights[4:]:
            (first_half / p.name).symlink_to(p)
    root = tmp_path / "repo"
    _init(root)
    res = runner.invoke(app, ["run", str(root), "--ingest", str(first_half), "-q"])
    assert res.exit_code == 0, res.output
    assert len(snapshot(root)["images"]) == 4
    # The next night's cron run sees the whole folder: only the four new frames are processed.
    res = runner.invoke(app, ["run", str(root), "--ingest", str(sim_raw)])
    assert res.exit_code == 0, res.output
    cells = [
        [c.strip() for c in line.strip("│").split("│")]
        for line in res.output.splitlines()
        if line.startswith("│")
    ]
    rows = {c[0]: c[1:] for c in cells}
    assert rows["calibrate"][:2] == ["4", "4"] and rows["master_bias"][:2] == ["0", "0"]
    assert len(snapshot(root)["images"]) == 8


def test_run_on_an_existing_dask_scheduler(tmp_path, sim_raw):
    from distributed import LocalCluster

    root = tmp_path / "repo"
    _init(root)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        res = subprocess.run(
            _darkroom(
                "run",
                str(root),
                "--ingest",
                str(sim_raw),
                "-q",
                "--until",
                "calibrate",
                "--scheduler",
                cluster.scheduler_address,
            ),
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(snapshot(root)["images"]) == 8
