"""`darkroom transit REPO --name T`: the transit fit of a target's light curve recorded in a repository.

A simulated night (darkroom.sim: a 1.5 % transit of 1 h in a 3 h sequence) goes through the
whole pipeline (ingest, run); the command reads the host's differential light curve from the
registry by its target name and fits it. The truth (mid-time, Rp/Rs) is the simulator's, which
does not come from the code under test.
"""

from __future__ import annotations

import re
import shutil

from typer.testing import CliRunner

from darkroom.cli import app
from darkroom.demo import sim_repo_overrides
from darkroom.sim import SimConfig, TransitConfig, simulate_night

SIM = SimConfig(
    seed=7,
    shape=(384, 384),
    n_science=90,
    exptime_s=30.0,
    cadence_s=120.0,
    n_stars=600,
    planet=TransitConfig(host_r_mag=12.0, depth=0.015, duration_h=1.0, impact_parameter=0.3, period_d=2.5),
)


def test_transit_fit_of_a_target_recorded_in_the_repository(tmp_path):
    night = simulate_night(tmp_path / "sim", config=SIM)
    truth = night.truth.summary["transit"]
    repo = tmp_path / "repo"
    cli = CliRunner()
    init = ["init", str(repo)] + [a for o in sim_repo_overrides(night) for a in ("--set", o)]
    assert cli.invoke(app, init).exit_code == 0
    shutil.copy(night.refcat_path, repo / "refcat.ecsv")
    raw = [str(p) for paths in night.raw_paths.values() for p in paths]
    for args in (["ingest", str(repo), *raw], ["run", str(repo)]):
        res = cli.invoke(app, args)
        assert res.exit_code == 0, (args, res.output)
    period, t0 = truth["period_d"], truth["t0_bjd_tdb"] - 40 * truth["period_d"]  # an old ephemeris
    table, png = tmp_path / "xo.txt", tmp_path / "fit.png"
    res = cli.invoke(
        app,
        ["transit", str(repo), "--name", night.config.object_name, "--period", str(period), "--t0", str(t0),
         "--a-rs", f"{truth['a_rs']:.3f}", "--inc", f"{truth['inc_deg']:.3f}", "--u1", str(truth["u1"]),
         "--u2", str(truth["u2"]), "-o", str(table), "--plot", str(png)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "epoch 40" in res.output and png.stat().st_size > 5000
    text = table.read_text()
    assert f"#EXOPLANET_NAME={night.config.object_name}" in text and "#FILTER=r" in text
    m = re.search(r"#RESULTS=Tc=([\d.]+) \+/- ([\d.]+),Rp/R\*=([\d.]+) \+/- ([\d.]+)", text)
    assert m, text[:2000]
    tc, tc_err, rp, rp_err = (float(v) for v in m.groups())
    n_points = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    assert n_points >= 0.9 * SIM.n_science
    # measured (emcee): Tc -0.26 +- 1.09 min from the truth, Rp/Rs 0.1171 +- 0.0050 for 0.1120
    assert abs(tc - truth["t0_bjd_tdb"]) < 3 * tc_err and abs(tc - truth["t0_bjd_tdb"]) * 1440 < 2.0
    assert abs(rp - truth["rp_rs"]) < 3 * rp_err and abs(rp / truth["rp_rs"] - 1) < 0.10


def test_transit_command_says_when_no_night_covers_the_transit(tmp_path):
    # a repository without light curves: the target's light curve cannot be found (one line, exit 1)
    repo = tmp_path / "repo"
    assert CliRunner().invoke(app, ["init", str(repo)]).exit_code == 0
    res = CliRunner().invoke(
        app, ["transit", str(repo), "--name", "XO-1b", "--period", "3.9", "--t0", "2455000.5"]
    )
    assert res.exit_code == 1 and "error" in res.output
