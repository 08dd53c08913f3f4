"""Analysis benchmark: transit fit with uncertainties per night, and periodogram + finders per survey
light curve, serial and on 2 workers (Dask, and `darkroom analyze --workers 2`), extrapolated to 10^4 light curves.

Usage: ``python bench/bench_analysis.py [N_LIGHTCURVES] [analyze]`` (default 100; ``analyze``: only
the ``darkroom analyze`` rows; the survey light curves
are the real ZTF non-variables and IRSA seasons, cycled). The shared machine may be loaded: the
table says how many were measured; 10^4 is extrapolated linearly from them.

The ``darkroom analyze`` rows run the whole command path (registry, quality check, finders,
properties and histograms) on N objects, one real light curve each (the non-variables and the IRSA
reply's band-seasons, registered again under new object names: the files are shared), serially
and with ``--workers 2``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import measure, print_table
from darkroom.analysis.lcfile import read_survey_table, split_band_season
from darkroom.analysis.periodic import find_period
from darkroom.analysis.quality import check_quality
from darkroom.analysis.transient import find_transients
from darkroom.analysis.transit import TransitFitConfig, fit_transit
from darkroom.sim.lightcurves import transit_model
from darkroom.testing import shared_data_dir


def _night(seed: int = 1):
    rng = np.random.default_rng(seed)
    tc = 2460000.5
    t = np.arange(tc - 0.13, tc + 0.13, 1.0 / 1440)
    f = transit_model(t, t0=tc, period_d=3.94, rp_rs=0.13, a_rs=11.2, inc_deg=88.8, u1=0.4, u2=0.25)
    return t, f + rng.normal(0, 0.0015, t.size)


def _survey_lcs():
    data = shared_data_dir()
    files = sorted((data / "lightcurve-known-answers" / "nonvariable-ztf").glob("*.csv"))
    files.append(data / "ztf-irsa-lightcurve" / "ZTF_lightcurve.csv")
    out = []
    for f in files:
        tab = read_survey_table(f, survey="ztf").table
        for part in split_band_season(tab, season_gap_days=300).values():
            if len(part) >= 20:
                out.append(part)
    return out


def _one(tab):
    good = tab[check_quality(tab) == 0]
    p = find_period(good["mjd"], good["mag"], good["magerr"], good["band"])
    lim = good["limitmag"] if "limitmag" in good.colnames else None
    ev = find_transients(good["mjd"], good["mag"], good["magerr"], good["band"], limit_mag=lim)
    return p.period_d, len(ev)


def _analyze_repo(root: Path, n: int) -> None:
    """A repository with ``n`` objects cycling the real light curves (module doc)."""
    from darkroom.facade import Repository
    from darkroom.pipeline.lightcurve_import import import_lightcurves
    from darkroom.repo.models import Lightcurve

    data = shared_data_dir()
    files = [*sorted((data / "lightcurve-known-answers" / "nonvariable-ztf").glob("*.csv"))]
    files.append(data / "ztf-irsa-lightcurve" / "ZTF_lightcurve.csv")
    repo = Repository.init(root)
    with repo.registry.session() as s:
        import_lightcurves(s, repo.root, files, survey="ztf", season_gap_days=100.0)
    with repo.registry.session() as s:
        real = [lc for lc in s.query(Lightcurve).order_by(Lightcurve.id) if lc.n_points >= 20]
        s.query(Lightcurve).delete()  # the objects become the cycled copies below
        for k in range(n):
            lc = real[k % len(real)]
            s.add(
                Lightcurve(
                    provenance_id=lc.provenance_id, key=f"bench:c{k:05d}:{lc.band}:{lc.season}", survey="bench",
                    object_id=f"c{k:05d}", band=lc.band, season=lc.season, time_scale=lc.time_scale,
                    mjd_start=lc.mjd_start, mjd_end=lc.mjd_end, n_points=lc.n_points, n_flagged=lc.n_flagged,
                    path=lc.path, sha256=lc.sha256, meta=dict(lc.meta or {}),
                )
            )  # fmt: skip
    repo.close()


def _analyze_rows(n: int) -> list[dict[str, str]]:
    """``darkroom analyze`` wall time on ``n`` objects, serially and with ``--workers 2`` (local worker
    processes)."""
    from darkroom.facade import Repository
    from darkroom.pipeline.analysis import analyze
    from darkroom.pipeline.executors import make_executor

    rows, secs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (0, 2):
            root = Path(tmp) / f"w{workers}"
            _analyze_repo(root, n)
            repo = Repository(root)
            executor = make_executor(workers=workers)
            try:
                t0 = time.perf_counter()
                rep = analyze(repo.registry, repo.root, repo.config.analysis, executor=executor)
                secs[workers] = time.perf_counter() - t0
            finally:
                executor.close()
                repo.close()
            label = "serial" if workers == 0 else f"--workers {workers} ({rep.executor})"
            ratio = f"1e4 objects: {secs[workers] / n * 1e4 / 3600:.2f} h"
            if workers:
                ratio += f"; serial/workers {secs[0] / secs[workers]:.2f}"
            rows.append({"stage": f"darkroom analyze {label}", "size": f"{rep.n_objects} objects",
                         "seconds": f"{secs[workers]:.1f}", "peak_MB": "-", "ratio": ratio})  # fmt: skip
    return rows


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    if sys.argv[2:] == ["analyze"]:
        print_table(_analyze_rows(n))
        return
    rows = []
    t, f = _night()
    e = np.full(t.size, 0.0015)
    for method in ("laplace", "mcmc"):
        sec, mem, _fit = measure(
            lambda m=method: fit_transit(
                t, f, e, period_d=3.94, t_c_guess=2460000.5, a_rs_prior=(11.2, 0.5), inc_prior=(88.8, 1.0),
                config=TransitFitConfig(method=m),
            )
        )  # fmt: skip
        rows.append({"stage": f"transit fit ({method})", "size": f"{t.size} points", "seconds": f"{sec:.2f}",
                     "peak_MB": f"{mem:.0f}", "ratio": f"EXOTIC 697 s / {sec:.1f} s = {697 / sec:.0f}x"})  # fmt: skip
    lcs = _survey_lcs()
    work = [lcs[k % len(lcs)] for k in range(n)]
    sec, mem, _ = measure(lambda: [_one(x) for x in work])
    rows.append({"stage": "period + finders serial", "size": f"{n} lcs", "seconds": f"{sec:.1f}",
                 "peak_MB": f"{mem:.0f}", "ratio": f"1e4 lcs: {sec / n * 1e4 / 3600:.2f} h"})  # fmt: skip
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        t0 = time.perf_counter()
        futures = client.map(_one, work, pure=False)
        client.gather(futures)
        dsec = time.perf_counter() - t0
    rows.append({"stage": "period + finders Dask 2 workers", "size": f"{n} lcs", "seconds": f"{dsec:.1f}",
                 "peak_MB": "-", "ratio": f"1e4 lcs: {dsec / n * 1e4 / 3600:.2f} h; serial/dask {sec / dsec:.2f}"})  # fmt: skip
    rows.extend(_analyze_rows(n))
    print_table(rows)


if __name__ == "__main__":
    main()
