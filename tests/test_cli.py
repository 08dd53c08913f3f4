"""The command line: init, ingest, status, inspect, and one-line errors."""

from __future__ import annotations

import shutil

from typer.testing import CliRunner

from darkroom.cli import app

runner = CliRunner()


def test_init_ingest_status(tmp_path, arcsat_dir):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in [
        "Bias_BIN1_20250602_032138.fits.gz",
        "XO1-b_z_20250602_041008.fits.gz",
        "20250602@032127.log",
    ]:
        shutil.copy(arcsat_dir / name, raw / name)
    (raw / "broken.fits").write_bytes(b"SIMPLE  =  nonsense")
    repo = tmp_path / "repo"
    res = runner.invoke(app, ["init", str(repo)])
    assert res.exit_code == 0, res.output
    assert (repo / "darkroom.yaml").is_file() and (repo / "registry.db").is_file()
    for sub in ("calib", "images", "catalogs", "lightcurves", "reports", "logs"):
        assert (repo / sub).is_dir()
    res = runner.invoke(app, ["ingest", str(repo), str(raw), "-q"])
    assert res.exit_code == 0, res.output
    assert "3 FITS files seen: 2 registered, 1 quarantined" in res.output
    assert "broken.fits" in res.output
    res = runner.invoke(app, ["ingest", str(repo), str(raw), "-q"])
    assert "0 registered, 0 quarantined, 3 already known" in res.output
    res = runner.invoke(app, ["status", str(repo)])
    assert res.exit_code == 0, res.output
    assert "quarantined" in res.output and "bias=1" in res.output and "light=1" in res.output


def test_set_override_is_saved_by_init(tmp_path):
    repo = tmp_path / "r"
    res = runner.invoke(app, ["init", str(repo), "--set", "ingest.batch_size=17"])
    assert res.exit_code == 0, res.output
    assert "batch_size: 17" in (repo / "darkroom.yaml").read_text()


def test_errors_are_one_line(tmp_path):
    res = runner.invoke(app, ["status", str(tmp_path / "nowhere")])
    assert res.exit_code == 1
    assert "not a darkroom repository" in res.output
    res = runner.invoke(app, ["init", str(tmp_path / "r"), "--set", "ingest.batch_size=-1"])
    assert res.exit_code == 1 and "ingest.batch_size" in res.output
    assert "Traceback" not in res.output


def test_inspect_prints_profile_and_metadata(arcsat_dir):
    res = runner.invoke(app, ["inspect", str(arcsat_dir / "XO1-b_z_20250602_041008.fits.gz")])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "light" in out and "60" in out and "2025-06-02" in out
    assert "profile" in out.lower()


def test_inspect_shows_bracketed_values_verbatim(data_dir):
    # FITS sections look like rich markup; they must be printed, not swallowed.
    res = runner.invoke(app, ["inspect", str(data_dir / "ccdproc-saao-and-sip" / "a8280271.fits")])
    assert res.exit_code == 0, res.output
    assert "[4:13,1:520]" in res.output and "[17:528,1:520]" in res.output


def test_ingest_with_workers_reads_the_night_in_processes(tmp_path, arcsat_dir):
    repo = tmp_path / "repo"
    assert runner.invoke(app, ["init", str(repo)]).exit_code == 0
    res = runner.invoke(app, ["ingest", str(repo), str(arcsat_dir), "--workers", "2", "-q"])
    assert res.exit_code == 0, res.output
    assert "96 FITS files seen: 96 registered, 0 quarantined" in res.output
    res = runner.invoke(app, ["status", str(repo)])
    assert "bias=5" in res.output and "light=81" in res.output, res.output
