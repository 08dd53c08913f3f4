"""`darkroom demo` runs to the end on a simulated night and reports what it did."""

from __future__ import annotations

from typer.testing import CliRunner

from darkroom.cli import app


def test_demo_end_to_end(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--frames", "3", "-q"])
    assert res.exit_code == 0, res.output
    assert "simulated" in res.output and "ingest" in res.output
    assert "0 quarantined" in res.output
    assert "3 calibrated" in res.output
    assert (tmp_path / "repo" / "darkroom.yaml").is_file()
    status = CliRunner().invoke(app, ["status", str(tmp_path / "repo")])
    assert status.exit_code == 0, status.output
    assert "light=3" in status.output and "bias=5" in status.output
