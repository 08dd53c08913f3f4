"""Instrument profiles on the command line: ``ingest --profiles``, one-line profile errors,
and ``inspect`` giving the same reason as ``ingest`` for the same file (issue 10, item 10)."""

from __future__ import annotations

import numpy as np
from astropy.io import fits
from typer.testing import CliRunner

from darkroom.cli import app

runner = CliRunner()


def _frame(path, **cards) -> None:
    h = fits.Header()
    for k, v in cards.items():
        h[k] = v
    fits.PrimaryHDU(np.full((16, 16), 100, np.uint16), header=h).writeto(path)


def test_ingest_profiles_folder_sets_the_frame_type(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    # 'KIND' is no keyword the built-in profiles read: only the user's profile says it is a light
    _frame(
        raw / "a001.fits", KIND="SCIENCE", INSTRUME="Toy", EXPTIME=5.0, **{"DATE-OBS": "2025-01-02T03:04:05"}
    )
    prof = tmp_path / "profiles"
    prof.mkdir()
    (prof / "toy.yaml").write_text(
        "name: toy\nextends: generic\nmatch:\n  - header: {INSTRUME: '^toy$'}\n"
        "frame_type:\n  keywords: [KIND]\n  values: {light: ['science']}\n"
    )
    repo = tmp_path / "repo"
    assert runner.invoke(app, ["init", str(repo)]).exit_code == 0
    res = runner.invoke(app, ["ingest", str(repo), str(raw), "-q", "--profiles", str(prof)])
    assert res.exit_code == 0, res.output
    assert "1 registered, 0 quarantined" in res.output
    assert "light" in res.output


def test_bad_profile_is_one_line_in_inspect_and_ingest(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _frame(raw / "a.fits", IMAGETYP="Light Frame", EXPTIME=1.0)
    prof = tmp_path / "profiles"
    prof.mkdir()
    (prof / "bad.yaml").write_text("name: bad\nmatch:\n  - header: {INSTRUME: '(unclosed'}\n")
    repo = tmp_path / "repo"
    assert runner.invoke(app, ["init", str(repo)]).exit_code == 0
    for args in (
        ["inspect", str(raw / "a.fits"), "--profiles", str(prof)],
        ["ingest", str(repo), str(raw), "-q", "--profiles", str(prof)],
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 1, res.output
        assert "Traceback" not in res.output
        assert res.exception is None or isinstance(res.exception, SystemExit)
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1, res.output
        assert "bad.yaml" in lines[0] and "bad regular expression" in lines[0]
    (prof / "bad.yaml").write_text("name: bad\nmatch: [\n")
    res = runner.invoke(app, ["inspect", str(raw / "a.fits"), "--profiles", str(prof)])
    assert res.exit_code == 1 and "not valid YAML" in res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1


def test_inspect_and_ingest_give_the_same_reason(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    good = raw / "good.fits"
    _frame(good, IMAGETYP="Light Frame", EXPTIME=1.0, **{"DATE-OBS": "2025-01-02T03:04:05"})
    _frame(raw / "notime.fits", IMAGETYP="Light Frame", EXPTIME=1.0)
    data = good.read_bytes()
    (raw / "cut.fits").write_bytes(data[: len(data) - 300])  # truncated data section
    (raw / "empty.fits").write_bytes(b"")
    repo = tmp_path / "repo"
    assert runner.invoke(app, ["init", str(repo)]).exit_code == 0
    res = runner.invoke(app, ["ingest", str(repo), str(raw), "-q"])
    assert res.exit_code == 0, res.output
    ingest_reasons = {
        line.split(": ", 1)[0].strip().rsplit("/", 1)[-1]: line.split(": ", 1)[1].strip()
        for line in res.output.splitlines()
        if line.startswith("  ") and ": " in line
    }
    assert {"cut.fits", "empty.fits"} <= set(ingest_reasons) <= {"cut.fits", "empty.fits", "notime.fits"}
    for name, reason in ingest_reasons.items():
        res = runner.invoke(app, ["inspect", str(raw / name)])
        assert res.exit_code == 1
        assert reason in " ".join(res.output.split()), (reason, res.output)
