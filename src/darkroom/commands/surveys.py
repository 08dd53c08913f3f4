"""Survey commands: ``darkroom targets import``, ``darkroom survey ztf|sdss``, ``darkroom cutouts``.

Thin wiring over :mod:`darkroom.pipeline.ztf`, :mod:`darkroom.pipeline.sdss` and
:mod:`darkroom.pipeline.cutouts`; errors
print as one line and exit 1; a step with failed targets exits 2 after its summary.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from darkroom.errors import DarkroomError

__all__ = ["register"]

console = Console()
err_console = Console(stderr=True)

RepoArg = Annotated[Path, typer.Argument(help="repository folder")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="override a parameter: section.key=value (repeatable)")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars; warnings and errors only")]
RefreshOpt = Annotated[
    bool, typer.Option("--refresh", help="ask the archive again, also for targets already done or empty")
]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="at most N targets this time")]
DbOpt = Annotated[str | None, typer.Option("--db", help="registry URL overriding darkroom.yaml")]


def _fail(exc: DarkroomError) -> None:
    err_console.print(f"[bold red]error:[/] {escape(exc.reason)}", soft_wrap=True)
    raise typer.Exit(1)


def _setup_logging(quiet: bool) -> None:
    import astropy  # noqa: F401  (astropy installs its logger class first)

    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("alembic", "astropy", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # one line per target would drown the progress bar
    logging.getLogger("darkroom.pipeline.threaded").setLevel(logging.WARNING)


def _bar(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=quiet,
    )


def print_drive_report(report, console: Console = console) -> None:
    """Counts per state, then the failures (first 20) with their reasons."""
    t = RichTable(title=f"{report.step}: {report.n_planned} targets in {report.seconds:.1f} s")
    for col in ("state", "targets"):
        t.add_column(col, justify="left" if col == "state" else "right")
    for state, n in sorted(report.counts.items()):
        t.add_row(state, str(n))
    console.print(t)
    if report.failures:
        console.print(f"failed ({len(report.failures)}):")
        for key, reason in report.failures[:20]:
            console.print(f"  {key}: {reason}", soft_wrap=True, markup=False, highlight=False)
        if len(report.failures) > 20:
            console.print(f"  ... and {len(report.failures) - 20} more (darkroom status lists them)")


def register(app: typer.Typer) -> None:
    """Add the survey commands to the ``darkroom`` application."""
    targets_app = typer.Typer(
        no_args_is_help=True, help="Target catalogues: the objects a survey project follows."
    )
    survey_app = typer.Typer(no_args_is_help=True, help="Survey data for every registered target.")
    app.add_typer(targets_app, name="targets")
    app.add_typer(survey_app, name="survey")

    @targets_app.command("import")
    def targets_import(
        repo: RepoArg,
        source: Annotated[
            str, typer.Argument(help="a CSV, ECSV, FITS, Parquet or HDF5 file, or a default catalogue: wd")
        ],
        columns: Annotated[
            str | None,
            typer.Option(
                "--columns",
                help="column mapping key=column,... (name, ra, dec, epoch, pmra, pmdec, parallax, mag.BAND); "
                "epoch may be a number [Julian year]",
            ),
        ] = None,
        catalog: Annotated[
            str | None, typer.Option("--catalog", help="catalogue name (default: file stem or wd)")
        ] = None,
        hdf5_path: Annotated[
            str | None, typer.Option("--hdf5-path", help="table path inside an HDF5 file")
        ] = None,
        vizier_url: Annotated[
            str | None, typer.Option("--vizier-url", help="VizieR root for default catalogues (a mirror)")
        ] = None,
        refresh: RefreshOpt = False,
        db: DbOpt = None,
        set_: SetOpt = None,
        quiet: QuietOpt = False,
    ) -> None:
        """Register targets from a file (with a column mapping) or a default catalogue (wd: Gaia EDR3 white
        dwarfs, Gentile Fusillo et al. 2021)."""
        from darkroom.catalogs.online import VIZIER_URL
        from darkroom.facade import Repository
        from darkroom.pipeline.survey_stage import resolve_cache_dir
        from darkroom.pipeline.survey_targets import import_targets
        from darkroom.surveys.targets import (
            DEFAULT_CATALOGS,
            fetch_default_catalog,
            parse_columns,
            read_target_file,
            standardize_targets,
        )

        _setup_logging(quiet)
        try:
            r = Repository(repo, db_url=db, overrides=set_ or ())
            if source in DEFAULT_CATALOGS and not Path(source).exists():
                name = catalog or source
                cache = resolve_cache_dir(r.root, r.config.surveys) / "catalogs"
                table = fetch_default_catalog(
                    source, base_url=vizier_url or VIZIER_URL, cache_dir=cache, refresh=refresh
                )
            else:
                path = Path(source)
                name = catalog or path.name.split(".")[0]
                table = standardize_targets(
                    read_target_file(path, hdf5_path=hdf5_path), parse_columns(columns), catalog=name
                )
            n_new, n_known = import_targets(r.registry, table, catalog=name)
            r.close()
        except DarkroomError as exc:
            _fail(exc)
        console.print(
            f"catalogue [bold]{escape(name)}[/]: {len(table)} targets read, {n_new} registered, "
            f"{n_known} already known; {table.meta.get('n_dropped', 0)} rows without a position, "
            f"{table.meta.get('n_duplicates', 0)} repeated names"
        )

    @survey_app.command("ztf")
    def survey_ztf(
        repo: RepoArg,
        refresh: RefreshOpt = False,
        limit: LimitOpt = None,
        db: DbOpt = None,
        set_: SetOpt = None,
        quiet: QuietOpt = False,
    ) -> None:
        """ZTF light curves for every registered target (IRSA), kept raw and reduced; resumable."""
        from darkroom.facade import Repository
        from darkroom.pipeline.ztf import run_ztf

        _setup_logging(quiet)
        try:
            r = Repository(repo, db_url=db, overrides=set_ or ())
            with _bar(quiet) as bar:
                task = bar.add_task("ztf", total=None)
                report = run_ztf(
                    r.root,
                    r.registry,
                    r.config.surveys,
                    refresh=refresh,
                    limit=limit,
                    progress=lambda done, total: bar.update(task, completed=done, total=max(total, 1)),
                )
            r.close()
        except DarkroomError as exc:
            _fail(exc)
        if not quiet:
            print_drive_report(report)
        if report.failures:
            raise typer.Exit(2)

    @survey_app.command("sdss")
    def survey_sdss(
        repo: RepoArg,
        refresh: RefreshOpt = False,
        limit: LimitOpt = None,
        db: DbOpt = None,
        set_: SetOpt = None,
        quiet: QuietOpt = False,
    ) -> None:
        """SDSS frames (five bands, kept compressed) of the fields covering every registered target; resumable."""
        from darkroom.facade import Repository
        from darkroom.pipeline.sdss import run_sdss

        _setup_logging(quiet)
        try:
            r = Repository(repo, db_url=db, overrides=set_ or ())
            with _bar(quiet) as bar:
                tasks: dict[str, object] = {}

                def progress(step: str, done: int, total: int) -> None:
                    if step not in tasks:
                        tasks[step] = bar.add_task(step, total=max(total, 1))
                    bar.update(tasks[step], completed=done, total=max(total, 1))

                reports = run_sdss(
                    r.root, r.registry, r.config.surveys, refresh=refresh, limit=limit, progress=progress
                )
            r.close()
        except DarkroomError as exc:
            _fail(exc)
        if not quiet:
            for report in reports:
                print_drive_report(report)
        if any(rep.failures for rep in reports):
            raise typer.Exit(2)

    @app.command("cutouts")
    def cutouts(
        repo: RepoArg,
        out: Annotated[
            Path | None, typer.Option("-o", "--out", help="output folder (default: surveys.cutouts.out_dir)")
        ] = None,
        size: Annotated[
            int | None, typer.Option("--size", min=4, max=1024, help="stamp side [pixel] (default 32)")
        ] = None,
        bands: Annotated[
            str | None, typer.Option("--bands", help="bands in cube order (default ugriz)")
        ] = None,
        workers: Annotated[int | None, typer.Option("--workers", min=1, help="threads")] = None,
        db: DbOpt = None,
        set_: SetOpt = None,
        quiet: QuietOpt = False,
    ) -> None:
        """A band x size x size cube per target (each band cut through its own WCS, mask plane where the
        stamp leaves the frame), one FITS per target plus cubes.h5 and index.csv; resumable."""
        from darkroom.facade import Repository
        from darkroom.pipeline.cutouts import run_cutouts

        _setup_logging(quiet)
        try:
            r = Repository(repo, db_url=db, overrides=set_ or ())
            out_dir = out or Path(r.config.surveys.cutouts.out_dir)
            out_dir = (
                out_dir if out_dir.is_absolute() else (Path.cwd() / out_dir if out else r.root / out_dir)
            )
            with _bar(quiet) as bar:
                task = bar.add_task("cutouts", total=None)
                report = run_cutouts(
                    r.root,
                    r.registry,
                    r.config.surveys,
                    out_dir=out_dir,
                    size=size,
                    bands=bands,
                    workers=workers,
                    progress=lambda done, total: bar.update(task, completed=done, total=max(total, 1)),
                )
            r.close()
        except DarkroomError as exc:
            _fail(exc)
        console.print(
            f"{report.n_targets} targets with SDSS frames: {report.n_written} cubes written "
            f"({report.n_masked} partly masked), {report.n_existing} already there, {len(report.failures)} failed "
            f"in {report.seconds:.1f} s; {report.hdf5}, {report.index}"
        )
        for key, reason in report.failures[:20]:
            console.print(f"  {key}: {reason}", soft_wrap=True, markup=False, highlight=False)
        if report.failures:
            raise typer.Exit(2)
