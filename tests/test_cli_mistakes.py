"""Every mistake a user or a cron line can make gives one line on stderr, no traceback,
and the documented exit status (README "Exit status": 1 error, 2 failed units, 130 Ctrl-C)."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from darkroom.cli import app

PG_URL = os.environ.get("DARKROOM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

runner = CliRunner()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("mistakes") / "repo"
    res = runner.invoke(app, ["init", str(root)])
    assert res.exit_code == 0, res.output
    return root


def _broken_repo(tmp_path, content: bytes):
    root = tmp_path / "broken"
    assert runner.invoke(app, ["init", str(root)]).exit_code == 0
    (root / "darkroom.yaml").write_bytes(content)
    return root


def _pg_base() -> str:
    return PG_URL.rsplit("/", 1)[0]


# (id, argv builder, exit status, words the one line must hold)
CASES = [
    (
        "status of a folder that is no repository",
        lambda r, t: ["status", str(t / "nowhere")],
        1,
        "not a darkroom repository",
    ),
    (
        "invalid --set value",
        lambda r, t: ["init", str(t / "r"), "--set", "ingest.batch_size=-1"],
        1,
        "ingest.batch_size",
    ),
    ("--set without =", lambda r, t: ["run", str(r), "--set", "photometry"], 1, "section.key=value"),
    ("--set of an unknown key", lambda r, t: ["run", str(r), "--set", "ingest.bach_size=3"], 1, "bach_size"),
    (
        "status --set of a misspelt key",
        lambda r, t: ["status", str(r), "--set", "ingest.bach_size=3"],
        1,
        "did you mean ingest.batch_size",
    ),
    (
        "report --set of an unknown section",
        lambda r, t: ["report", str(r), "--set", "reprot.x=1"],
        1,
        "no such",
    ),
    (
        "ingest of a path that does not exist",
        lambda r, t: ["ingest", str(r), str(t / "typo")],
        1,
        "no such file or folder",
    ),
    ("ingest of a FIFO", lambda r, t: ["ingest", str(r), str(t / "pipe.fits")], 1, "not a regular file"),
    (
        "run --ingest of a path that does not exist",
        lambda r, t: ["run", str(r), "--ingest", str(t / "typo")],
        1,
        "no such file or folder",
    ),
    (
        "PostgreSQL unreachable",
        lambda r, t: ["status", str(r), "--db", "postgresql+psycopg://u@127.0.0.1:9/x"],
        1,
        "cannot reach the registry database",
    ),
    (
        "PostgreSQL database missing",
        lambda r, t: ["status", str(r), "--db", f"{_pg_base()}/no_such_db_{uuid.uuid4().hex[:8]}"],
        1,
        "does not exist",
    ),
    (
        "registry.url that is no URL",
        lambda r, t: ["status", str(r), "--db", "registry.db"],
        1,
        "not a database URL",
    ),
    (
        "registry.url with an unknown driver",
        lambda r, t: ["status", str(r), "--db", "mongodb://h/x"],
        1,
        "unknown database or driver",
    ),
    (
        "init --db unreachable",
        lambda r, t: ["init", str(t / "pg"), "--db", "postgresql+psycopg://u@127.0.0.1:9/x"],
        1,
        "cannot reach",
    ),
    (
        "non-UTF-8 darkroom.yaml",
        lambda r, t: ["status", str(_broken_repo(t, b"registry:\n  url: caf\xe9\n"))],
        1,
        "not UTF-8",
    ),
    ("empty darkroom.yaml", lambda r, t: ["status", str(_broken_repo(t, b""))], 1, "is empty"),
    (
        "darkroom.yaml not YAML",
        lambda r, t: ["status", str(_broken_repo(t, b"registry: [\n"))],
        1,
        "not valid YAML",
    ),
    (
        "lightcurve -o into a missing folder",
        lambda r, t: ["lightcurve", str(r), "--source", "1", "-o", str(t / "no" / "lc.csv")],
        1,
        "does not exist",
    ),
    (
        "lightcurve --plot into a missing folder",
        lambda r, t: ["lightcurve", str(r), "--source", "1", "--plot", str(t / "no" / "lc.png")],
        1,
        "does not exist",
    ),
    ("lightcurve of nothing", lambda r, t: ["lightcurve", str(r), "--source", "1"], 1, ""),
    ("run --until an unknown stage", lambda r, t: ["run", str(r), "--until", "photmetry"], 1, "photmetry"),
    ("inspect a missing file", lambda r, t: ["inspect", str(t / "none.fits")], 1, "none.fits"),
    ("inspect a link to /dev/zero", lambda r, t: ["inspect", str(t / "zero.fits")], 1, "not a regular file"),
]


@pytest.mark.parametrize(("label", "argv", "status", "words"), CASES, ids=[c[0] for c in CASES])
def test_mistake_gives_one_line(tmp_path, repo, label, argv, status, words):
    os.mkfifo(tmp_path / "pipe.fits")
    (tmp_path / "zero.fits").symlink_to("/dev/zero")
    res = runner.invoke(app, argv(repo, tmp_path))
    assert res.exit_code == status, (label, res.output)
    assert res.exception is None or isinstance(res.exception, SystemExit), (label, repr(res.exception))
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, (label, res.stderr)
    assert words.lower() in lines[0].lower(), (label, lines[0])


def test_init_with_an_unreachable_database_saves_nothing(tmp_path):
    root = tmp_path / "pg"
    res = runner.invoke(app, ["init", str(root), "--db", "postgresql+psycopg://u@127.0.0.1:9/x"])
    assert res.exit_code == 1
    assert not (root / "darkroom.yaml").exists()


def test_password_makes_darkroom_yaml_private(tmp_path):
    name = f"darkroom_test_{uuid.uuid4().hex[:12]}"
    import sqlalchemy as sa

    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        base = _pg_base().replace("postgres@", "postgres:secret@")
        root = tmp_path / "pw"
        res = runner.invoke(app, ["init", str(root), "--db", f"{base}/{name}"])
        assert res.exit_code == 0, res.output
        mode = stat.S_IMODE((root / "darkroom.yaml").stat().st_mode)
        assert mode == 0o600, oct(mode)
        assert "secret" not in res.output
        plain = tmp_path / "plain"
        assert runner.invoke(app, ["init", str(plain)]).exit_code == 0
        assert stat.S_IMODE((plain / "darkroom.yaml").stat().st_mode) & 0o044  # no secret: readable
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def test_ctrl_c_says_resume_and_leaves_no_task_running(tmp_path, monkeypatch):
    import darkroom.pipeline.runner as runner_mod
    from darkroom.facade import Repository
    from darkroom.repo.models import Task

    root = tmp_path / "repo"
    assert runner.invoke(app, ["init", str(root)]).exit_code == 0
    raw = tmp_path / "raw"
    raw.mkdir()
    _write_bias_frames(raw, 3)
    assert runner.invoke(app, ["ingest", str(root), str(raw), "-q"]).exit_code == 0

    real = runner_mod.SerialExecutor.map_units

    def interrupted(self, fn, units):
        for n, item in enumerate(real(self, fn, units)):
            if n == 0:
                raise KeyboardInterrupt  # Ctrl-C while the first unit is being recorded
            yield item

    monkeypatch.setattr(runner_mod.SerialExecutor, "map_units", interrupted)
    res = runner.invoke(app, ["run", str(root), "-q"])
    assert res.exit_code == 130, res.output
    assert "interrupted; run again to resume" in res.stderr
    assert "Traceback" not in res.output
    with Repository(root) as r, r.registry.session() as s:
        from sqlalchemy import select

        states = set(s.scalars(select(Task.state)))
    assert "running" not in states, states


def _write_bias_frames(folder, n):
    import numpy as np
    from astropy.io import fits

    for i in range(n):
        h = fits.Header()
        h["IMAGETYP"] = "BIAS"
        h["EXPTIME"] = 0.0
        h["DATE-OBS"] = f"2024-03-01T0{i}:00:00"
        fits.PrimaryHDU(np.full((16, 16), 1000 + i, dtype=np.uint16), header=h).writeto(folder / f"b{i}.fits")


def test_run_ends_with_a_summary_naming_the_report(tmp_path):
    root = tmp_path / "repo"
    assert runner.invoke(app, ["init", str(root)]).exit_code == 0
    raw = tmp_path / "raw"
    raw.mkdir()
    _write_bias_frames(raw, 3)
    res = runner.invoke(app, ["run", str(root), "--ingest", str(raw)])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "frames in: 3 usable (3 bias); 0 quarantined" in out
    assert "failed: 0 units" in out and "light curves: none" in out
    assert "no light frame names an OBJECT" in out  # a stage that made nothing says why
    report = next(line.split("report: ", 1)[1] for line in out.splitlines() if line.startswith("report: "))
    assert os.path.isfile(report) and report.startswith(str(root))
    assert f"darkroom status {root}" in out
    log_line = next(line for line in out.splitlines() if line.startswith("details: "))
    assert str(root / "logs") in log_line
    # darkroom products: where each product of a frame is.
    res = runner.invoke(app, ["products", str(root), "--image", "b1.fits"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == str(raw / "b1.fits") and "bias" in lines[1] and "; ok" in lines[1]
    master = next(line for line in lines if "went into master bias: " in line).split(": ", 1)[1]
    assert os.path.isfile(master) and master.startswith(str(root / "calib"))
    res = runner.invoke(app, ["products", str(root), "--image", "nothing-like-this"])
    assert res.exit_code == 1 and "no registered file matches" in res.stderr


def test_lightcurve_options_take_sexagesimal_and_default_to_darkroom_yaml(tmp_path, monkeypatch):
    from darkroom import facade

    seen = {}

    def fake_lightcurve(self, **kwargs):
        seen.update(kwargs)
        from darkroom.errors import DarkroomError

        raise DarkroomError("stop here")

    monkeypatch.setattr(facade.Repository, "lightcurve", fake_lightcurve)
    root = tmp_path / "repo"
    assert runner.invoke(app, ["init", str(root)]).exit_code == 0
    res = runner.invoke(app, ["lightcurve", str(root), "--ra", "16:02:11.84", "--dec", "+28:10:10.4"])
    assert res.exit_code == 1 and "stop here" in res.stderr
    assert abs(seen["ra"] - 240.5493333) < 1e-6 and abs(seen["dec"] - 28.1695556) < 1e-6
    assert seen["differential"] is True  # photometry.lightcurves.lightcurve.differential: true
    res = runner.invoke(
        app, ["lightcurve", str(root), "--ra", "240.549333", "--dec", "28.169556", "--absolute"]
    )
    assert seen["differential"] is False and abs(seen["ra"] - 240.549333) < 1e-9
    res = runner.invoke(app, ["lightcurve", str(root), "--ra", "25:00:00", "--dec", "0"])
    assert res.exit_code == 1 and "--ra" in res.stderr and "Traceback" not in res.output


def test_stage_names_in_the_help_are_the_pipeline_stages():
    from darkroom.cli import STAGE_NAMES
    from darkroom.config import DarkroomConfig
    from darkroom.pipeline.run import all_stages

    assert tuple(s.name for s in all_stages(Path("/nonexistent"), DarkroomConfig())) == STAGE_NAMES
    res = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert "master_bias" in res.output and "lightcurves" in res.output


def test_status_names_failed_units_by_file_and_speaks_json_and_csv(tmp_path):
    import csv
    import io
    import json

    from darkroom.facade import Repository
    from darkroom.repo.models import Exposure, Task

    root = tmp_path / "repo"
    assert runner.invoke(app, ["init", str(root)]).exit_code == 0
    long_name = "/data/" + "a-very-long-folder-name/" * 4 + "XO1-b_z_20250602_041008.fits.gz"
    with Repository(root) as r, r.registry.session() as s:
        exp = Exposure(sha256="0" * 64, path=long_name, size_bytes=1, state="ok", frame_type="light", meta={})
        s.add(exp)
        s.flush()
        s.add(
            Task(stage="calibrate", key=f"exp:{exp.id}", provenance_id="p", state="failed", reason="no flat")
        )
    res = runner.invoke(app, ["status", str(root)])
    assert res.exit_code == 2
    assert f"calibrate {long_name} (exp:1): no flat" in res.stdout  # whole, never truncated
    res = runner.invoke(app, ["status", str(root), "--format", "json"])
    doc = json.loads(res.stdout)
    assert res.exit_code == 2 and doc["failed"] == [
        {"stage": "calibrate", "file": long_name, "unit": "exp:1", "reason": "no flat"}
    ]
    res = runner.invoke(app, ["status", str(root), "--format", "csv"])
    rows = list(csv.reader(io.StringIO(res.stdout)))
    assert ["failed", "calibrate", long_name, "1", "no flat"] in rows
    res = runner.invoke(app, ["status", str(root), "--format", "yaml"])
    assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1


def test_binned_curve_breaks_at_gaps_and_bad_pixel_thumbnail_shows_bad_pixels():
    import io

    import numpy as np
    from matplotlib import image as mimage

    from darkroom.report.plots import thumbnail_png
    from darkroom.timeseries.plot import break_at_gaps

    t = np.array([0.0, 10.0, 20.0, 45.0, 55.0]) / 1440.0  # a 25-minute gap after the third bin
    tb, yb, _ = break_at_gaps(t, np.ones(5), np.ones(5), bin_minutes=10.0)
    assert len(tb) == 6 and np.isnan(tb[3]) and np.isnan(yb[3])
    bpm = np.zeros((1024, 1024), np.uint8)
    bpm[100, 200] = 1  # one hot pixel of a million
    png = mimage.imread(io.BytesIO(thumbnail_png(bpm, max_pix=256, mask=True)))
    grey = png[..., 0]
    assert grey.max() > 0.9 and (grey > 0.9).sum() == 1  # visible, and only there
