"""Analysis commands: ``darkroom lightcurves import``, ``analyze``, ``properties``, ``detections``,
``rates`` and ``transit``. Thin wiring over :mod:`darkroom.pipeline.analysis`; errors print as one
line and exit 1."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from darkroom.errors import DarkroomError

__all__ = ["register"]

console = Console()
err_console = Console(stderr=True)
RepoArg = Annotated[Path, typer.Argument(help="repository folder")]
OutOpt = Annotated[Path, typer.Option("-o", "--output", help="output table (.csv, .ecsv or .parquet)")]


def _fail(reason: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(reason)}", soft_wrap=True)
    raise typer.Exit(1)


def _repo(path: Path):
    from darkroom.facade import Repository

    return Repository(path)


def _write(table, out: Path) -> None:
    from darkroom.io.atomic import atomic_path

    fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".parquet": "parquet"}.get(out.suffix.lower())
    if fmt is None:
        _fail(f"{out.name}: use a .csv, .ecsv or .parquet suffix")
    with atomic_path(out) as tmp:
        table.write(tmp, format=fmt)


def register(app: typer.Typer) -> None:
    """Add the analysis commands to ``app``."""
    lc_app = typer.Typer(help="survey and imported light curves", no_args_is_help=True)
    app.add_typer(lc_app, name="lightcurves")

    @lc_app.command("import")
    def lightcurves_import(
        repo: RepoArg,
        paths: Annotated[list[Path], typer.Argument(help="light-curve files (CSV, ECSV, Parquet, FITS)")],
        survey: Annotated[str, typer.Option("--survey", help="survey label (ztf maps zg/zr/zi)")] = "import",
        season_gap: Annotated[
            float | None, typer.Option("--season-gap", help="days; default from config")
        ] = None,
    ) -> None:
        """Register light curves (one object per file), split per band and season."""
        from darkroom.pipeline.lightcurve_import import import_lightcurves

        try:
            r = _repo(repo)
            gap = season_gap or r.config.analysis.season_gap_days
            files = [p for path in paths for p in (sorted(path.rglob("*.*")) if path.is_dir() else [path])]
            with r.registry.session() as s, s.begin():
                n_new, n_known, failures = import_lightcurves(
                    s, r.root, files, survey=survey, season_gap_days=gap
                )
            r.close()
        except DarkroomError as exc:
            _fail(exc.reason)
        for f in failures:
            err_console.print(f"[yellow]skipped[/] {escape(f)}", soft_wrap=True)
        console.print(
            f"{n_new} light curves registered, {n_known} already known, {len(failures)} files skipped"
        )

    @app.command("analyze")
    def analyze_cmd(
        repo: RepoArg,
        injections: Annotated[
            int, typer.Option("--injections", min=0, help="events injected per light curve")
        ] = 0,
        workers: Annotated[
            int, typer.Option("--workers", min=0, help="worker processes on this machine (0, 1: serial)")
        ] = 0,
        scheduler: Annotated[
            str | None, typer.Option("--scheduler", help="address of a running Dask scheduler")
        ] = None,
    ) -> None:
        """Quality checks, finders and injection-recovery on every light curve (skips what is done;
        results are committed as objects finish, so an interrupted run resumes)."""
        from rich.progress import Progress

        from darkroom.pipeline.analysis import analyze
        from darkroom.pipeline.executors import make_executor

        executor = None
        try:
            r = _repo(repo)
            # one worker process gains nothing over this one: serial
            executor = make_executor(workers=workers if workers > 1 else 0, scheduler=scheduler)
            with Progress(console=console, transient=True) as bar:
                task = bar.add_task("analyze", total=None)
                rep = analyze(
                    r.registry,
                    r.root,
                    r.config.analysis,
                    injections=injections,
                    executor=executor,
                    progress=lambda k, n: bar.update(task, completed=k, total=n),
                )
            r.close()
        except DarkroomError as exc:
            _fail(exc.reason)
        finally:
            if executor is not None:
                executor.close()
        for f in rep.failures:
            err_console.print(f"[yellow]failed[/] {escape(f)}", soft_wrap=True)
        console.print(
            f"analysis {rep.provenance_id}: {rep.n_objects} objects analysed, {rep.n_skipped} already done, "
            f"{rep.n_detections} detections; {rep.n_injections} injections, {rep.n_recovered} recovered; "
            f"histograms {rep.histogram_path}"
        )

    @app.command("properties")
    def properties_cmd(repo: RepoArg, output: OutOpt) -> None:
        """Per-object properties of the current analysis settings as a table."""
        from astropy.table import Table
        from sqlalchemy import select

        from darkroom.pipeline.analysis import analysis_provenance
        from darkroom.repo.models import Properties, Target

        r = _repo(repo)
        pid, _ = analysis_provenance(r.config.analysis)
        with r.registry.session() as s:
            rows = s.execute(
                select(Properties, Target).outerjoin(Target, Target.id == Properties.target_id)
                .where(Properties.provenance_id == pid)
                .order_by(Properties.object_key)
            ).all()  # fmt: skip
            tab = Table(
                rows=[
                    (
                        p.object_key.split(":", 1)[-1],
                        t.ra_deg if t else float("nan"),
                        t.dec_deg if t else float("nan"),
                        p.n_epochs,
                        p.period_d if p.period_d is not None else float("nan"),
                        p.period_fap if p.period_fap is not None else float("nan"),
                        p.best_snr if p.best_snr is not None else float("nan"),
                        int(p.values.get("transient", {}).get("n_events", 0)),
                    )
                    for p, t in rows
                ],
                names=("name", "ra", "dec", "n_epochs", "period_d", "period_fap", "best_snr", "n_events"),
                dtype=(str, float, float, int, float, float, float, int),
            )
        r.close()
        _write(tab, output)
        console.print(f"{len(tab)} objects written to {output}")

    @app.command("detections")
    def detections_cmd(
        repo: RepoArg,
        output: OutOpt,
        simulated: Annotated[
            bool, typer.Option("--simulated", help="the recovered injections instead")
        ] = False,
    ) -> None:
        """Detections of the current analysis settings as a table."""
        from astropy.table import Table
        from sqlalchemy import select

        from darkroom.pipeline.analysis import analysis_provenance
        from darkroom.repo.models import Detection, Lightcurve

        r = _repo(repo)
        pid, _ = analysis_provenance(r.config.analysis)
        with r.registry.session() as s:
            rows = s.execute(
                select(Detection, Lightcurve.object_id)
                .outerjoin(Lightcurve, Lightcurve.id == Detection.lightcurve_id)
                .where(Detection.provenance_id == pid, Detection.simulated.is_(simulated))
                .order_by(Detection.id)
            ).all()
            tab = Table(
                rows=[
                    (o or "", d.finder, d.mjd, d.snr, d.duration_d or 0.0, d.peak_mag, d.simulated)
                    for d, o in rows
                ],
                names=("name", "finder", "mjd", "snr", "duration_d", "peak_mag", "simulated"),
                dtype=(str, str, float, float, float, float, bool),
            )
        r.close()
        _write(tab, output)
        console.print(f"{len(tab)} detections written to {output}")

    @app.command("rates")
    def rates_cmd(
        repo: RepoArg,
        plot: Annotated[
            Path | None, typer.Option("--plot", help="efficiency PNG (default: beside the histograms)")
        ] = None,
    ) -> None:
        """Searched epochs, detections and the injection efficiency; a PNG of efficiency vs S/N."""
        from darkroom.io.atomic import atomic_write_bytes
        from darkroom.pipeline.analysis import analysis_provenance
        from darkroom.pipeline.report import analysis_summaries
        from darkroom.report import efficiency_png

        r = _repo(repo)
        pid, _ = analysis_provenance(r.config.analysis)
        summary = next((sm for sm in analysis_summaries(r) if sm.provenance_id == pid), None)
        root = r.root
        r.close()
        if summary is None:
            _fail(f"no analysis {pid} yet: run darkroom analyze first")
        console.print(
            f"analysis {pid}: {summary.n_lightcurves} light curves, {summary.n_epochs} epochs, "
            f"{summary.days_searched:.0f} days searched; {summary.n_detections} real detections; "
            f"efficiency 50 % at S/N {summary.snr50:.2f} (threshold {summary.snr_threshold:g})"
        )
        for c, n, k in zip(summary.snr_centre, summary.n_injected, summary.n_recovered, strict=True):
            if n:
                console.print(f"  S/N {c:6.2f}: {k:4d}/{n:<4d} recovered")
        out = plot or (root / summary.histograms).with_name("efficiency.png")
        atomic_write_bytes(out, efficiency_png(summary))
        console.print(f"plot {out}")

    @app.command("transit")
    def transit_cmd(
        source: Annotated[
            Path,
            typer.Argument(
                help="a repository folder (the target's light curve recorded in it) or a light-curve "
                "file: bjd_tdb (or mjd), rel_flux/flux, errors"
            ),
        ],
        name: Annotated[
            str,
            typer.Option("--name", help="planet name; with a repository, its target name in darkroom.yaml"),
        ],
        period: Annotated[float, typer.Option("--period", help="orbital period [day]")],
        t0: Annotated[float, typer.Option("--t0", help="a mid-transit time [BJD_TDB]")],
        rp_rs: Annotated[
            float, typer.Option("--rp-rs", help="starting Rp/Rs (planet / star radius) [ratio]")
        ] = 0.1,
        a_rs: Annotated[float | None, typer.Option("--a-rs", help="prior mean of a/Rs")] = None,
        a_rs_err: Annotated[
            float, typer.Option("--a-rs-err", help="prior sigma of a/Rs [stellar radii]")
        ] = 0.5,
        inc: Annotated[
            float | None, typer.Option("--inc", help="prior mean of the inclination [deg]")
        ] = None,
        inc_err: Annotated[
            float, typer.Option("--inc-err", help="prior sigma of the inclination [deg]")
        ] = 1.0,
        u1: Annotated[float, typer.Option("--u1", help="quadratic limb darkening u1 [unitless]")] = 0.4,
        u2: Annotated[float, typer.Option("--u2", help="quadratic limb darkening u2 [unitless]")] = 0.25,
        detrend: Annotated[str, typer.Option("--detrend", help="linear | airmass | none")] = "linear",
        method: Annotated[str, typer.Option("--method", help="mcmc | laplace")] = "mcmc",
        window: Annotated[
            float,
            typer.Option(
                "--window", help="half-width of the prior on the mid-time about the prediction [day]"
            ),
        ] = 0.1,
        output: Annotated[Path | None, typer.Option("-o", help="AAVSO Exoplanet Watch table")] = None,
        plot: Annotated[Path | None, typer.Option("--plot", help="PNG of data, model and residuals")] = None,
        filter_name: Annotated[
            str, typer.Option("--filter", help="filter name for the AAVSO table (repository: the data's)")
        ] = "",
        exposure: Annotated[
            float, typer.Option("--exposure", help="exposure time per point [s] (repository: the frames')")
        ] = 0.0,
    ) -> None:
        """Fit a known planet's transit (mid-time BJD_TDB, Rp/Rs, a/Rs, i) in one night's light curve.

        With a repository, the target named by --name (darkroom.yaml ``targets``) has its
        differential light curve read from the registry (flagged frames left out) and every
        night that covers a predicted transit is fitted; with several, -o and --plot get the
        transit's epoch number before their suffix.
        """
        from darkroom.analysis.transit import TransitFitConfig, fit_transit

        try:
            fits = []
            for night in _transit_nights(source, name, period=period, t0=t0, window=window):
                tc = t0 + night.epoch * period
                fit = fit_transit(
                    night.t, night.flux, night.err, period_d=period, t_c_guess=tc, t_c_window_d=window,
                    rp_rs_guess=rp_rs, a_rs_prior=(a_rs, a_rs_err) if a_rs else None,
                    inc_prior=(inc, inc_err) if inc else None, u=(u1, u2), airmass=night.airmass,
                    config=TransitFitConfig(method=method, detrend=detrend),  # type: ignore[arg-type]
                )  # fmt: skip
                fits.append((night, tc, fit))
        except DarkroomError as exc:
            _fail(exc.reason)
        for night, tc, fit in fits:
            n, t, f, e = night.epoch, night.t, night.flux, night.err
            console.print(
                f"{escape(name)} (epoch {n}): Tc = {fit.t_c:.5f} +- {fit.t_c_err * 1440:.2f} min BJD_TDB "
                f"(predicted {tc:.5f}, O-C {(fit.t_c - tc) * 1440:+.2f} min); Rp/Rs = {fit.rp_rs:.4f} +- "
                f"{fit.rp_rs_err:.4f}; depth {fit.depth * 100:.3f} %; a/Rs {fit.a_rs:.2f}; i {fit.inc_deg:.2f} deg; "
                f"residual scatter {fit.residual_rms * 1e3:.2f} ppt; {t.size} points"
            )
            tag = f"_{n}" if len(fits) > 1 else ""
            if output:
                out = output.with_name(f"{output.stem}{tag}{output.suffix}")
                flt, exp_s = filter_name or night.filter_name, exposure or night.exposure_s
                _write_transit_table(out, fit, t, f, e, name, flt, exp_s)
                console.print(f"table {out}")
            if plot:
                _plot_transit(plot.with_name(f"{plot.stem}{tag}{plot.suffix}"), fit, t, f, e, name)


@dataclass
class _Night:
    """One night's light curve around a predicted transit."""

    epoch: int  #: transit number from T0
    t: Any  #: BJD_TDB [day]
    flux: Any  #: relative flux (median 1)
    err: Any  #: its 1-sigma error
    airmass: Any  #: or None
    filter_name: str = ""
    exposure_s: float = 0.0


def _transit_nights(source: Path, name: str, *, period: float, t0: float, window: float) -> list[_Night]:
    """The nights with a predicted transit: from a light-curve file, or from a repository's
    target (its differential light curve, flagged frames left out)."""
    import numpy as np

    from darkroom.errors import BadInputError

    if source.is_dir():
        r = _repo(source)
        try:
            lc = r.lightcurve(name=name, differential=True)
        finally:
            r.close()
        cols = lc.colnames
        t_all = np.asarray(lc["bjd_tdb"], float)
        f_all = np.asarray(lc["rel_flux"], float)
        e_all = np.asarray(lc["rel_flux_err"], float)
        am_all = np.asarray(lc["airmass"], float) if "airmass" in cols else None
        flt_all = np.asarray(lc["filter"]).astype(str) if "filter" in cols else np.full(len(lc), "")
        exp_all = np.asarray(lc["exptime"], float) if "exptime" in cols else np.zeros(len(lc))
    else:
        from darkroom.timeseries import read_lightcurve

        lc = read_lightcurve(source)
        cols = lc.colnames
        t_all = np.asarray(lc["bjd_tdb"] if "bjd_tdb" in cols else lc["mjd"], float)
        fcol = "rel_flux" if "rel_flux" in cols else "flux"
        f_all = np.asarray(lc[fcol], float)
        e_all = np.asarray(lc[fcol + "_err" if fcol + "_err" in cols else "fluxerr"], float)
        am_all = np.asarray(lc["airmass"], float) if "airmass" in cols else None
        flt_all = np.full(len(lc), "")
        exp_all = np.zeros(len(lc))
    if t_all.size and np.nanmax(t_all) < 2_400_000:
        t_all = t_all + 2_400_000.5  # MJD -> JD
    ok = np.isfinite(t_all) & np.isfinite(f_all) & np.isfinite(e_all) & (e_all > 0)
    if am_all is not None and not np.all(np.isfinite(am_all[ok])):
        am_all = None  # no airmass detrending on partial airmasses
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(t_all[idx])]
    if idx.size == 0:
        raise BadInputError(f"{name}: no usable points in {source}")
    # a file is one night; a repository's light curve splits at gaps over 0.5 d, and a night is
    # fitted if its predicted transit (within the prior's window) overlaps it
    breaks = np.flatnonzero(np.diff(t_all[idx]) > 0.5) + 1 if source.is_dir() else []
    out = []
    for part in np.split(idx, breaks):
        t = t_all[part]
        n = round((float(np.median(t)) - t0) / period)
        tc = t0 + n * period
        if source.is_dir() and (tc + window < t.min() or tc - window > t.max() or part.size < 10):
            continue
        f, e = f_all[part], e_all[part]
        scale = float(np.nanmedian(f))
        flt = ",".join(sorted(set(flt_all[part]) - {""}))
        exp_s = float(np.median(exp_all[part])) if exp_all[part].size else 0.0
        airmass = None if am_all is None else am_all[part]
        out.append(_Night(n, t, f / scale, e / scale, airmass, flt, exp_s))
    if not out:
        raise BadInputError(
            f"{name}: no night in {source} covers a predicted transit (T0 {t0}, P {period} d, window {window} d)"
        )
    return out


def _write_transit_table(out: Path, fit, t, f, e, name: str, filter_name: str, exposure_s: float) -> None:
    from darkroom.analysis.transit import aavso_report
    from darkroom.io.atomic import atomic_write_text

    atomic_write_text(
        out,
        aavso_report(
            fit, t, f, e, star=name.rstrip("bcdefgh ").strip() or name, planet=name,
            filter_name=filter_name, exposure_s=exposure_s,
        ),
    )  # fmt: skip


def _plot_transit(out: Path, fit, t, f, e, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from darkroom.io.atomic import atomic_path

    ok = np.isfinite(t) & np.isfinite(f) & np.isfinite(e) & (e > 0)
    fig, (a1, a2) = plt.subplots(2, 1, sharex=True, figsize=(7, 5), height_ratios=(3, 1))
    hours = (t[ok] - fit.t_c) * 24
    a1.errorbar(hours, f[ok], e[ok], fmt=".", alpha=0.6)
    a1.plot(hours, fit.model, "r-")
    a1.set_ylabel("relative flux")
    a2.plot(hours, f[ok] - fit.model, ".")
    a2.set_xlabel("hours from mid-transit")
    a1.set_title(f"{name}: Tc {fit.t_c:.5f} +- {fit.t_c_err * 1440:.1f} min")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
