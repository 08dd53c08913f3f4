"""Time-domain analysis against published answers (lightcurve-known-answers, ztf-irsa-lightcurve
MANIFESTs) and simulator truth; the analyze/properties/detections/rates commands end to end."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from astropy.table import Table
from typer.testing import CliRunner

from darkroom.analysis.inject import fit_efficiency
from darkroom.analysis.lcfile import read_survey_table
from darkroom.analysis.periodic import PeriodConfig, find_period
from darkroom.analysis.quality import check_quality
from darkroom.analysis.transient import TransientConfig, find_transients
from darkroom.analysis.transit import TransitFitConfig, fit_transit
from darkroom.cli import app
from darkroom.sim.lightcurves import transit_model
from darkroom.testing import shared_data_dir

KA = shared_data_dir() / "lightcurve-known-answers"
IRSA = shared_data_dir() / "ztf-irsa-lightcurve" / "ZTF_lightcurve.csv"
NONVAR = sorted((KA / "nonvariable-ztf").glob("*.csv"))


@pytest.mark.slow
def test_rrlyrae_multiband_period_within_0p1_percent():
    # measured on all 121 stars: 115 (95.0 %); single-band r Lomb-Scargle: 92 (76 %). Every 2nd star here.
    periods = Table.read(KA / "rrlyrae" / "periods.csv")
    cfg = PeriodConfig(min_period_d=0.2, max_period_d=5.0)
    good = []
    for row in periods[::2]:
        lc = Table.read(KA / "rrlyrae" / "light-curves" / f"{row['Num']}.csv")
        res = find_period(lc["time"], lc["mag"], lc["magerr"], lc["band"], cfg)
        good.append(abs(res.period_d / row["Per"] - 1) < 1e-3)
        assert res.fap < 1e-6  # real variables are significant
    assert np.mean(good) >= 0.90, np.mean(good)


@pytest.mark.slow
def test_snia_one_event_near_the_bts_peak():
    # All 549 light curves with >= 5 epochs. With the Ia template (peak_model='snia': the mean of
    # the data's maximum and the Hsiao template's, fitted through the gaps) 522 (95.1 %) are within
    # 5 d and 0.3 mag; from the data alone 514 (93.6 %; the brightest epoch in any band 92.7 %), the
    # template alone 512 (93.3 %): they miss on different light curves (the data where the maximum
    # fell in a gap, the template where the event is not a normal Ia). Measured before, not adopted:
    # a Bazin fit at gap edges 86.7 %, a 3-point parabola 92.3 %. Never a second event.
    bts = Table.read(KA / "snia" / "bts.csv")
    cfg = TransientConfig(peak_model="snia")
    ok, n_events = [], []
    for row in bts:
        lc = Table.read(KA / "snia" / "light-curves" / f"{row['ZTFID']}.csv")
        if len(lc) < 5:
            continue
        events = find_transients(lc["time"], lc["mag"], lc["magerr"], lc["band"], difference=True, config=cfg)
        n_events.append(len(events))
        if events:
            ev = events[0]
            t_peak = row["peakt"] + 57999.5
            ok.append(abs(ev.mjd_peak - t_peak) < 5.0 and abs(ev.peak_mag - row["peakmag"]) < 0.3)
        else:
            ok.append(False)
    assert len(ok) == 549
    assert set(n_events) == {1}
    assert np.mean(ok) >= 0.95, np.mean(ok)


def test_nonvariables_no_event_and_no_period():
    for path in NONVAR:
        data = read_survey_table(path, survey="ztf")
        t = data.table[check_quality(data.table) == 0]
        assert len(t) >= 95
        assert find_transients(t["mjd"], t["mag"], t["magerr"], t["band"]) == []
        res = find_period(t["mjd"], t["mag"], t["magerr"], t["band"])
        assert res.fap >= 0.01 and res.power <= 0.26, (path.name, res.period_d, res.fap)


def test_irsa_reply_read_flagged_and_not_periodic():
    data = read_survey_table(IRSA, survey="ztf")
    t = data.table
    assert len(t) == 1852 and set(t["band"]) == {"g", "r", "i"}
    q = check_quality(t)
    assert np.sum(np.asarray(t["catflags"]) != 0) == 51 and np.all(q[np.asarray(t["catflags"]) != 0] != 0)
    good = t[q == 0]
    res = find_period(good["mjd"], good["mag"], good["magerr"], good["band"])
    assert res.fap >= 0.01, (res.period_d, res.fap)


def test_quality_flags_one_of_two_disagreeing_exposures():
    # two same-band exposures 43 s apart (overlapping ZTF fields) see the same flux: when one is 1 mag
    # brighter, it is the artefact; when both are, it is an event, kept
    t = Table({"mjd": [100.0, 100.0005, 103.0, 106.0], "mag": [19.4, 20.4, 20.3, 20.35],
               "magerr": [0.06, 0.12, 0.1, 0.1], "band": ["g"] * 4})  # fmt: skip
    assert list(check_quality(t) != 0) == [True, False, False, False]
    t["mag"][1] = 19.45
    assert not np.any(check_quality(t) != 0)


def test_irsa_reply_no_event_at_5_sigma():
    # G ~ 20.3 at the survey limit: with the reported errors alone, 4 events at 5.1-6.5 sigma (epochs whose
    # limiting magnitude is at or above the star's, Malmquist-biased); measured now: the best candidate
    # of the whole reply at 4.5 sigma (threshold 3: 4.54, 4.06, 3.86)
    data = read_survey_table(IRSA, survey="ztf")
    good = data.table[check_quality(data.table) == 0]
    assert len(good) > 1700 and "limitmag" in good.colnames
    events = find_transients(
        good["mjd"], good["mag"], good["magerr"], good["band"], limit_mag=good["limitmag"]
    )
    assert events == [], [(ev.mjd_peak, ev.snr, ev.duration_d) for ev in events]


@pytest.mark.slow
def test_transit_fit_on_simulated_nights_is_calibrated():
    # 24 nights, 1-min cadence, 1.5 ppt white noise, a linear trend; truth from darkroom.sim (its own
    # numerical Mandel-Agol model, not batman). Measured: |depth| 1.5 %, |Tc| 0.68 min, pulls 1.03 / 0.93.
    rng = np.random.default_rng(5)
    pull_t, pull_r, ddepth, dt = [], [], [], []
    for _ in range(24):
        period, rp = 3.0 + rng.uniform(0, 2), rng.uniform(0.09, 0.14)
        a, inc = rng.uniform(8, 14), rng.uniform(87, 90)
        tc = 2460000.5 + rng.uniform(-0.02, 0.02)
        t = np.arange(tc - 0.13, tc + 0.13, 1.0 / 1440)
        sig = 0.0015
        f = transit_model(t, t0=tc, period_d=period, rp_rs=rp, a_rs=a, inc_deg=inc, u1=0.4, u2=0.25)
        f = f * (1 + 0.003 * (t - tc)) + rng.normal(0, sig, t.size)
        fit = fit_transit(
            t, f, np.full(t.size, sig), period_d=period, t_c_guess=2460000.5, t_c_window_d=0.05,
            a_rs_prior=(a, 0.5), inc_prior=(inc, 1.0), config=TransitFitConfig(method="laplace"),
        )  # fmt: skip
        pull_t.append((fit.t_c - tc) / fit.t_c_err)
        pull_r.append((fit.rp_rs - rp) / fit.rp_rs_err)
        ddepth.append(abs(fit.depth / rp**2 - 1))
        dt.append(abs(fit.t_c - tc) * 1440)
    assert np.mean(ddepth) < 0.03 and np.mean(dt) < 1.0
    for pulls in (pull_t, pull_r):
        assert 0.8 <= np.sqrt(np.mean(np.square(pulls))) <= 1.25


@pytest.mark.slow
def test_injection_recovery_efficiency_across_the_threshold(tmp_path):
    # Flares, supernovae and microlensing events injected into the real light curves (the three
    # non-variables and the IRSA reply, per band and season) by `darkroom analyze --injections`, in
    # simulation mode (the same quality checker and finder), the efficiency read back from the netCDF
    # histograms, all with the default settings. The IRSA target (G ~ 20.3) sits at the survey limit:
    # the finder's error floor from limitmag keeps its Malmquist-biased epochs from making events.
    # Measured here (315 injections, drawn per light curve from the seed and its key): recovered below
    # 0.5 x threshold 1/64, above 2 x threshold 75/78, 50 % at 1.06 x threshold, no real detection
    # (before that floor, with the same defaults and draws in object order: 7/63, 75/82, 1.06 and 4
    # real detections in the IRSA reply).
    runner = CliRunner()
    repo = tmp_path / "repo"
    settings = ["--set", "analysis.injection.seed=3", "--set", "analysis.injection.snr_range=[1.5, 20.0]"]
    assert runner.invoke(app, ["init", str(repo), *settings]).exit_code == 0
    res = runner.invoke(
        app, ["lightcurves", "import", str(repo), *map(str, NONVAR), str(IRSA), "--survey", "ztf"]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["analyze", str(repo), "--injections", "35"])
    assert res.exit_code == 0, res.output
    assert " 0 detections;" in " ".join(res.output.split()), res.output  # nothing real at 5 sigma
    ds = xr.load_dataset(next((repo / "analysis").glob("*/searched.nc")), engine="h5netcdf")
    thr = float(ds.attrs["snr_threshold"])
    edges = np.asarray(ds["inj_snr_edges"])
    n = np.asarray(ds["n_injected"].sum("kind"))
    k = np.asarray(ds["n_recovered"].sum("kind"))
    assert set(np.asarray(ds["kind"])) == {"flare", "sn", "microlensing"} and n.sum() >= 230
    below, above = edges[1:] <= 0.5 * thr + 1e-9, edges[:-1] >= 2.0 * thr - 1e-9
    assert k[below].sum() / n[below].sum() < 0.10, (k[below], n[below])
    assert k[above].sum() / n[above].sum() > 0.90, (k[above], n[above])
    s50, _width = fit_efficiency(np.sqrt(edges[1:] * edges[:-1]), n, k)
    assert abs(s50 / thr - 1.0) < 0.15, (s50, list(zip(n, k, strict=True)))


def test_analyze_commands_end_to_end(tmp_path):
    runner = CliRunner()
    repo = tmp_path / "repo"
    assert runner.invoke(app, ["init", str(repo)]).exit_code == 0
    res = runner.invoke(app, ["lightcurves", "import", str(repo), *map(str, NONVAR), "--survey", "ztf"])
    assert res.exit_code == 0 and "3 light curves registered" in res.output, res.output
    res = runner.invoke(app, ["lightcurves", "import", str(repo), str(NONVAR[0]), "--survey", "ztf"])
    assert "0 light curves registered, 1 already known" in res.output
    res = runner.invoke(app, ["analyze", str(repo), "--injections", "2"])
    assert res.exit_code == 0 and "3 objects analysed" in res.output, res.output
    assert "6 injections" in " ".join(res.output.split())
    res = runner.invoke(app, ["analyze", str(repo)])
    assert "0 objects analysed, 3 already done" in " ".join(res.output.split()), res.output
    props, dets = tmp_path / "p.csv", tmp_path / "d.csv"
    assert runner.invoke(app, ["properties", str(repo), "-o", str(props)]).exit_code == 0
    p = Table.read(props)
    assert len(p) == 3 and np.all(p["n_epochs"] >= 95) and np.all(p["period_fap"] >= 0.01)
    assert runner.invoke(app, ["detections", str(repo), "-o", str(dets)]).exit_code == 0
    assert len(Table.read(dets, format="ascii.csv")) == 0  # the non-variables: nothing real
    res = runner.invoke(app, ["rates", str(repo)])
    assert res.exit_code == 0 and "3 light curves" in res.output, res.output
    nc = next((repo / "analysis").glob("*/searched.nc"))
    ds = xr.load_dataset(nc, engine="h5netcdf")
    assert int(ds["n_epochs"].sum()) == int(p["n_epochs"].sum())
    assert int(ds["n_injected"].sum()) == 6 and (nc.parent / "efficiency.png").stat().st_size > 5000
    # a changed parameter gives a new analysis provenance (new rows beside the old)
    from darkroom.analysis.finders import AnalysisConfig
    from darkroom.analysis.transient import TransientConfig
    from darkroom.pipeline.analysis import analysis_provenance

    changed = AnalysisConfig(transient=TransientConfig(snr_threshold=6.0))
    assert analysis_provenance(changed)[0] != analysis_provenance(AnalysisConfig())[0] == nc.parent.name
