"""`darkroom demo` runs the whole pipeline on a simulated night and recovers the truth."""

from __future__ import annotations

from rich.console import Console
from typer.testing import CliRunner

from darkroom.cli import app
from darkroom.demo import run_demo


def test_demo_recovers_the_simulated_truth(tmp_path):
    with open(tmp_path / "out.txt", "w") as log:
        figures = run_demo(tmp_path, n_science=30, size=512, seed=3, console=Console(file=log), quiet=True)
    assert figures["n_failed"] == 0 and figures["n_quarantined"] == 0
    assert figures["n_calibrated"] == 30
    assert (
        abs(figures["transit_depth"] - figures["transit_depth_true"]) < 0.15 * figures["transit_depth_true"]
    )
    assert abs(figures["zero_point_error_mag"]) < 0.03
    assert abs(figures["colour_term"] - 0.03) < 0.02
    assert figures["astrometric_rms_pix"] < 0.1
    report = (tmp_path / "repo" / "reports" / "night-2025-06-01.html").read_text()
    assert "SIM-1b" in report  # the target's light curve is on the page


def test_demo_command_prints_figures_and_report(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--frames", "6", "--size", "256", "-q"])
    assert res.exit_code == 0, res.output
    for text in ("simulated", "ingest", "recovered vs truth", "transit depth", "report:"):
        assert text in res.output, text
    status = CliRunner().invoke(app, ["status", str(tmp_path / "repo")])
    assert status.exit_code == 0, status.output
    assert "light=6" in status.output and "bias=5" in status.output
