"""The ``darkroom`` command line (typer + rich).

Each command is thin wiring over :mod:`darkroom.repo` and :mod:`darkroom.pipeline`;
errors from darkroom print as one line and exit with status 1.
"""

from __future__ import annotations

import functools
import gc
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from darkroom import (
    __version__,
    _threads,  # noqa: F401  (fixes BLAS threads before numpy loads; typer/rich do not load numpy)
)
from darkroom.errors import DarkroomError


class _GuardedTyper(typer.Typer):
    """A Typer whose commands never show a traceback.

    Every command is wrapped: a :class:`DarkroomError` prints its one-line reason
    (exit 1), a database error prints one line in plain words (exit 1), Ctrl-C prints
    "interrupted; run again to resume" (exit 130), and anything unexpected prints one
    line naming the log file that holds the traceback (exit 1).
    """

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorator(fn):
            @functools.wraps(fn)
            def guarded(*a, **k):
                return _guard(fn, a, k)

            register(guarded)
            return fn

        return decorator


app = _GuardedTyper(
    add_completion=False,
    no_args_is_help=True,
    help="darkroom: raw astronomical frames in; calibrated images, photometry and light curves out.",
)
console = Console()
err_console = Console(stderr=True)
#: set by :func:`main`: the command runs in a process of its own that ends with it (not in a
#: caller's process, as under typer's test runner)
_ENDS_WITH_THE_PROCESS = False
log = logging.getLogger("darkroom.cli")

RepoArg = Annotated[Path, typer.Argument(help="repository folder")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a parameter: section.key=value (repeatable)"),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars; warnings and errors only")]

#: the stages of ``darkroom run`` in order, for the help of --until/--only/--redo (a test keeps
#: it equal to pipeline.run.all_stages; importing the pipeline here would slow every --help)
STAGE_NAMES = (
    "master_bias",
    "master_dark",
    "master_flat",
    "sky_flat",
    "bad_pixels",
    "calibrate",
    "extract",
    "quality",
    "astrometry",
    "associate",
    "photometry",
    "lightcurves",
)
STAGE_HELP = ", ".join(STAGE_NAMES) + " (and the coadd stages when coadd.enabled)"

#: exit statuses (README "Exit status"): 0 fine, 1 error (one line on stderr), 2 some units
#: failed, 130 interrupted by Ctrl-C
EXIT_ERROR, EXIT_FAILED_UNITS, EXIT_INTERRUPTED = 1, 2, 130


def _error_line(text: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(text)}", soft_wrap=True, highlight=False)


def _fail(exc: DarkroomError) -> None:
    _error_line(exc.reason)
    raise typer.Exit(EXIT_ERROR)


def _guard(fn, args, kwargs):
    """Run a command body; turn every escaping error into one line and an exit status."""
    import click

    try:
        return fn(*args, **kwargs)
    except (
        typer.Exit,
        typer.Abort,
        click.exceptions.Exit,
        click.exceptions.ClickException,
        click.exceptions.Abort,
    ):
        raise
    except DarkroomError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        err_console.print("interrupted; run again to resume", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError):
            from darkroom.repo.registry import registry_error

            url = str(getattr(getattr(exc, "engine", None), "url", "") or "the registry")
            _error_line(registry_error(exc, url).reason)
            raise typer.Exit(EXIT_ERROR) from None
        if isinstance(exc, OSError) and exc.filename:
            _error_line(f"{exc.filename}: {exc.strerror or exc}")
            raise typer.Exit(EXIT_ERROR) from None
        log.debug("unexpected error", exc_info=True)
        where = _LOG_FILE[0] if _LOG_FILE else None
        _error_line(
            f"unexpected {exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}"
            + (f" (traceback in {where})" if where else "")
        )
        raise typer.Exit(EXIT_ERROR) from None


class _OncePerKind(logging.Filter):
    """Show the first warning of each kind on the console; count (and log to file) the rest.

    A kind is the logger plus the message template, so 81 "no photometric calibration for
    image %d" lines become one line and a count in the end-of-run summary.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, str(record.msg))
        self.seen[kind] = self.seen.get(kind, 0) + 1
        return self.seen[kind] == 1

    def n_hidden(self) -> int:
        return sum(n - 1 for n in self.seen.values())


#: the log file of this command (set by _setup_logging when there is a repository)
_LOG_FILE: list[Path] = []
_CONSOLE_FILTER: list[_OncePerKind] = []
#: loggers whose messages are details for the log file only (Dask's start-up and shutdown chatter)
_FILE_ONLY = ("distributed", "tornado", "bokeh", "asyncio", "alembic", "matplotlib", "PIL", "fsspec")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes, not the stream at set-up.

    A caller that swaps stderr (a test runner, a notebook capturing output) and closes it
    afterwards must not leave logging writing into a closed stream.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(quiet: bool, repo: Path | None = None) -> None:
    """Console: warnings a person should read (once per kind). File REPO/logs/darkroom-DATE.log: details.

    ``quiet`` hides progress bars (not warnings).
    """
    import astropy  # noqa: F401  (astropy must install its logger class before we touch its logger)

    del quiet  # warnings are shown either way; progress is handled by the callers
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_darkroom", False):
            root.removeHandler(h)
            h.close()
    root.setLevel(logging.INFO)
    logging.getLogger("darkroom").setLevel(logging.DEBUG)
    console_handler = _StderrHandler()
    console_handler.setLevel(logging.WARNING)
    console_handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    console_handler.addFilter(lambda r: not r.name.startswith(_FILE_ONLY))
    once = _OncePerKind()
    console_handler.addFilter(once)
    console_handler._darkroom = True  # type: ignore[attr-defined]
    root.addHandler(console_handler)
    _CONSOLE_FILTER[:] = [once]
    _LOG_FILE.clear()
    logs = Path(repo).expanduser().resolve() / "logs" if repo is not None else None
    if logs is not None and logs.is_dir():
        path = logs / f"darkroom-{time.strftime('%Y-%m-%d')}.log"
        try:
            fh = logging.FileHandler(path, encoding="utf-8")
        except OSError:
            fh = None
        if fh is not None:
            fh.setLevel(logging.DEBUG)
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            fh._darkroom = True  # type: ignore[attr-defined]
            root.addHandler(fh)
            _LOG_FILE.append(path)
    for name in (*_FILE_ONLY, "astropy"):
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("distributed").setLevel(logging.WARNING)  # even the log file needs no Dask INFO


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=quiet,
        transient=False,
    )


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False,
) -> None:
    if version:
        console.print(f"darkroom {__version__}")
        raise typer.Exit(0)


@app.command()
def init(
    repo: RepoArg,
    db: Annotated[str | None, typer.Option("--db", help="registry URL (default: SQLite inside REPO)")] = None,
    set_: SetOpt = None,
) -> None:
    """Create a repository (folders, darkroom.yaml, registry)."""
    from darkroom.facade import Repository

    try:
        r = Repository.init(repo, db_url=db, overrides=set_ or ())
    except DarkroomError as exc:
        _fail(exc)
    console.print(
        f"repository [bold]{r.root}[/] ready; registry {r.registry.backend} at revision {r.registry.revision()}"
    )
    r.close()


def parse_ra(text: str | None) -> float | None:
    """Right ascension [deg] from degrees ("240.5493") or hours ("16:02:11.84", "16h02m11.84s")."""
    return _parse_angle(text, "--ra", hours=True)


def parse_dec(text: str | None) -> float | None:
    """Declination [deg] from degrees ("28.1696", "+28:10:10.4", "28d10m10.4s")."""
    return _parse_angle(text, "--dec", hours=False)


def _parse_angle(text: str | None, option: str, *, hours: bool) -> float | None:
    if text is None:
        return None
    from astropy import units as u
    from astropy.coordinates import Angle

    t = text.strip()
    try:
        if hours and (":" in t or "h" in t.lower() or " " in t):
            value = Angle(t, unit=u.hourangle).deg
        else:
            value = Angle(t, unit=u.deg).deg
    except Exception:
        raise DarkroomError(
            f"{option} {text!r} is not an angle: give degrees (240.5493) or "
            + ("hours 16:02:11.84" if hours else "degrees +28:10:10.4")
        ) from None
    if (hours and not 0 <= value < 360) or (not hours and not -90 <= value <= 90):
        raise DarkroomError(f"{option} {text!r} is out of range")
    return float(value)


def _check_output_folder(path: Path | None, option: str) -> None:
    """Refuse an output file whose folder does not exist, before any work is done."""
    if path is None:
        return
    folder = path.expanduser().parent
    if not folder.is_dir():
        raise DarkroomError(f"{option} {path}: folder {folder} does not exist (create it first)")
    if path.is_dir():
        raise DarkroomError(f"{option} {path} is a folder; give a file name")


@app.command()
def ingest(
    repo: RepoArg,
    paths: Annotated[list[Path], typer.Argument(help="files or folders to register (walked recursively)")],
    db: Annotated[str | None, typer.Option("--db", help="registry URL overriding darkroom.yaml")] = None,
    profiles: Annotated[
        list[Path] | None,
        typer.Option(
            "--profiles", help="folder of user instrument profiles (repeatable; before ingest.profile_dirs)"
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=0, help="processes reading the files (0: read here)")
    ] = 0,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Register raw FITS files in place (by checksum; ingesting twice changes nothing)."""
    from darkroom.facade import Repository
    from darkroom.pipeline.drive import print_ingest_summary
    from darkroom.pipeline.ingest import check_paths, find_fits_files, ingest_paths

    _setup_logging(quiet, repo)
    try:
        paths = check_paths(paths)  # a typo in a cron line fails here, before anything else
        r = Repository(repo, db_url=db, overrides=set_ or ())
        total = sum(1 for _ in find_fits_files(paths, suffixes=r.config.ingest.extensions))
        t0 = time.perf_counter()
        with _progress(quiet) as bar:
            task = bar.add_task("ingest", total=total)
            summary = ingest_paths(
                r.registry,
                paths,
                config=r.config.ingest,
                profile_root=r.root,
                profile_dirs=tuple(profiles or ()),
                progress=lambda _p: bar.advance(task),
                workers=workers,
            )
        print_ingest_summary(summary, time.perf_counter() - t0, console)
        r.close()
    except DarkroomError as exc:
        _fail(exc)


@app.command()
def upgrade(
    repo: RepoArg,
    no_backup: Annotated[
        bool, typer.Option("--no-backup", help="do not back the registry up first (you did it yourself)")
    ] = False,
    db: Annotated[str | None, typer.Option("--db", help="registry URL overriding darkroom.yaml")] = None,
) -> None:
    """Bring a repository's registry to the newest schema, backing it up first (REPO/backups)."""
    from darkroom.facade import Repository

    try:
        r = Repository(repo, db_url=db, upgrade=False)
        old, head = r.registry.revision(), r.registry.head_revision()
        if old == head:
            console.print(f"registry at revision {head}: up to date")
            r.close()
            return
        backup = r.upgrade(backup=not no_backup)
        r.close()
    except DarkroomError as exc:
        _fail(exc)
    console.print(f"registry upgraded from revision {old} to {head}", soft_wrap=True)
    if backup is not None:
        console.print(f"the old registry is saved in {backup}", soft_wrap=True, markup=False, highlight=False)


@app.command()
def status(
    repo: RepoArg,
    db: Annotated[str | None, typer.Option("--db", help="registry URL overriding darkroom.yaml")] = None,
    fmt: Annotated[
        str,
        typer.Option("--format", help="text (for people), json or csv (for scripts)", case_sensitive=False),
    ] = "text",
    set_: SetOpt = None,
) -> None:
    """What is registered, what is done, what failed and why (exit 2 when something failed)."""
    from darkroom.facade import Repository

    fmt = fmt.lower()
    if fmt not in ("text", "json", "csv"):
        raise DarkroomError(f"--format {fmt!r}: choose text, json or csv")
    try:
        r = Repository(repo, db_url=db, overrides=set_ or ())
        st = r.status()
        files = _unit_files(r, [key for _stage, key, _reason in st["failed"]])
        r.close()
    except DarkroomError as exc:
        _fail(exc)
    # Failed units by the file they concern (the registry key stays for reference).
    st["failed"] = [(stage, files.get(key, key), key, reason) for stage, key, reason in st["failed"]]
    if fmt != "text":
        _print_status_machine(st, fmt)
        if st["failed"]:
            raise typer.Exit(EXIT_FAILED_UNITS)
        return
    t = RichTable(title=f"exposures in {Path(repo).resolve()}")
    t.add_column("state")
    t.add_column("count", justify="right")
    for state, n in sorted(st["exposures"].items()):
        t.add_row(state, str(n))
    console.print(t)
    if st["types"]:
        console.print(
            "usable frames by type: " + ", ".join(f"{k}={v}" for k, v in sorted(st["types"].items()))
        )
    if st["images_quality"] or st["images_astrometry"]:
        console.print(
            "images by quality: "
            + ", ".join(f"{k}={v}" for k, v in sorted(st["images_quality"].items()))
            + "; by astrometry: "
            + ", ".join(f"{k}={v}" for k, v in sorted(st["images_astrometry"].items()))
        )
    if st["poor"]:
        console.print(f"poor frames ({len(st['poor'])}):")
        for path, reason in st["poor"]:
            console.print(f"  {Path(path).name}: {reason}", soft_wrap=True, markup=False, highlight=False)
    provs = st.get("provenances")
    if provs is not None and len(provs):
        pt = RichTable(title="provenances (products of each configuration; * = current)")
        for col in ("stage", "provenance", "created [UTC]", "products"):
            pt.add_column(col, justify="right" if col == "products" else "left")
        for row in provs:
            mark = "*" if row["current"] else ""
            pt.add_row(
                row["stage"], f"{row['provenance_id']}{mark}", row["created_utc"], str(row["n_products"])
            )
        console.print(pt)
    if st["tasks"]:
        tt = RichTable(title="tasks")
        for col in ("stage", "state", "count"):
            tt.add_column(col)
        for stage, state, n in sorted(st["tasks"]):
            tt.add_row(stage, state, str(n))
        console.print(tt)
    if st["downloads"]:
        _print_downloads(st["targets"], st["downloads"])
    # Files and reasons as whole lines, never cut to a table column's width.
    if st["quarantined"]:
        console.print(f"quarantined files ({len(st['quarantined'])}):")
        for p, reason in st["quarantined"]:
            console.print(f"  {p}: {reason or ''}", soft_wrap=True, markup=False, highlight=False)
    if st["failed"]:
        console.print(f"failed units ({len(st['failed'])}):")
        for stage, file, key, reason in st["failed"]:
            unit = file if file == key else f"{file} ({key})"
            console.print(f"  {stage} {unit}: {reason or ''}", soft_wrap=True, markup=False, highlight=False)
        raise typer.Exit(EXIT_FAILED_UNITS)


def _unit_files(r, keys: list[str]) -> dict[str, str]:
    """The raw file of each unit key ``exp:ID`` / ``img:ID`` (other keys: none)."""
    from sqlalchemy import select

    from darkroom.repo.models import Exposure, Image

    exp_ids = {int(k[4:]): k for k in keys if k.startswith("exp:") and k[4:].isdigit()}
    img_ids = {int(k[4:]): k for k in keys if k.startswith("img:") and k[4:].isdigit()}
    out: dict[str, str] = {}
    with r.registry.session() as s:
        if exp_ids:
            for eid, path in s.execute(select(Exposure.id, Exposure.path).where(Exposure.id.in_(exp_ids))):
                out[exp_ids[eid]] = path
        if img_ids:
            rows = s.execute(
                select(Image.id, Exposure.path)
                .join(Exposure, Image.exposure_id == Exposure.id)
                .where(Image.id.in_(img_ids))
            )
            for iid, path in rows:
                out[img_ids[iid]] = path
    return out


def _print_status_machine(st: dict, fmt: str) -> None:
    """``status --format json|csv``: every count and every file with its reason, for scripts."""
    import csv
    import io
    import json

    if fmt == "json":
        doc = {
            "exposures": st["exposures"],
            "types": st["types"],
            "images_quality": st["images_quality"],
            "images_astrometry": st["images_astrometry"],
            "tasks": [{"stage": a, "state": b, "count": n} for a, b, n in st["tasks"]],
            "poor": [{"file": p, "reason": r} for p, r in st["poor"]],
            "quarantined": [{"file": p, "reason": r} for p, r in st["quarantined"]],
            "failed": [{"stage": a, "file": f, "unit": k, "reason": r} for a, f, k, r in st["failed"]],
        }
        sys.stdout.write(json.dumps(doc, indent=1, default=str) + "\n")
        return
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["kind", "stage_or_state", "file", "count", "reason"])
    for state, n in sorted(st["exposures"].items()):
        w.writerow(["exposures", state, "", n, ""])
    for stage, state, n in sorted(st["tasks"]):
        w.writerow(["tasks", f"{stage}:{state}", "", n, ""])
    for p, reason in st["poor"]:
        w.writerow(["poor", "", p, 1, reason])
    for p, reason in st["quarantined"]:
        w.writerow(["quarantined", "", p, 1, reason or ""])
    for stage, file, _key, reason in st["failed"]:
        w.writerow(["failed", stage, file, 1, reason or ""])
    sys.stdout.write(buf.getvalue())


def _print_downloads(n_targets: int, downloads: list[tuple[str, str, str, int]]) -> None:
    """Targets per survey and state, then why they are empty or failed (most common first)."""
    totals: dict[tuple[str, str], int] = {}
    for survey, state, _reason, n in downloads:
        totals[(survey, state)] = totals.get((survey, state), 0) + n
    t = RichTable(title=f"survey downloads ({n_targets} targets registered)")
    for col in ("survey", "state", "count"):
        t.add_column(col, justify="right" if col == "count" else "left")
    for (survey, state), n in sorted(totals.items()):
        t.add_row(survey, state, str(n))
    console.print(t)
    why = sorted((r for r in downloads if r[1] != "done" and r[2]), key=lambda r: (r[0], r[1], -r[3]))
    if why:
        w = RichTable(title="why empty or failed")
        for col in ("survey", "state", "reason", "count"):
            w.add_column(col, justify="right" if col == "count" else "left")
        for survey, state, reason, n in why[:30]:
            w.add_row(survey, state, escape(reason), str(n))
        console.print(w)


@app.command()
def run(
    repo: RepoArg,
    ingest_paths_: Annotated[
        list[Path] | None,
        typer.Option("--ingest", help="register new files from this folder first (repeatable)"),
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help=f"stop after this stage: {STAGE_HELP}")] = None,
    only: Annotated[str | None, typer.Option("--only", help=f"run only this stage: {STAGE_HELP}")] = None,
    redo: Annotated[
        str | None,
        typer.Option("--redo", help=f"forget this stage's products (and later ones) and redo: {STAGE_HELP}"),
    ] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="run failed units again")] = False,
    workers: Annotated[
        int, typer.Option("--workers", min=0, help="worker processes on this machine (0: serial)")
    ] = 0,
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="address of a running Dask scheduler")
    ] = None,
    report: Annotated[
        bool,
        typer.Option("--report/--no-report", help="write the night report (REPO/reports/) after a full run"),
    ] = True,
    db: Annotated[str | None, typer.Option("--db", help="registry URL overriding darkroom.yaml")] = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Run every stage over what is registered, skipping what is done; end with a summary.

    Exit 2 when anything failed."""
    from darkroom.facade import Repository
    from darkroom.pipeline.drive import (
        drive_stages,
        frames_to_calibrate,
        print_ingest_summary,
        print_reports,
        raw_frames_kept,
    )
    from darkroom.pipeline.executors import make_executor
    from darkroom.pipeline.run import all_stages, forget_from, select_stages
    from darkroom.pipeline.summary import print_run_summary, run_summary
    from darkroom.repo.store import remove_orphan_temps

    _setup_logging(quiet, repo)
    if workers and not scheduler:
        from darkroom.pipeline.executors import prepare_local_workers

        prepare_local_workers()  # the workers' imports, on the other core while this one starts
    try:
        r = Repository(repo, db_url=db, overrides=set_ or ())
        remove_orphan_temps(r.root)  # left by a run that was killed mid-write
        # serially, what ingest reads is kept for the masters and calibrate (read once, not twice)
        with raw_frames_kept(r.config.ingest, serial=bool(ingest_paths_) and not workers and not scheduler):
            if ingest_paths_:
                # the FITS reader, astropy.time and the instrument profiles: only when asked
                from darkroom.pipeline.ingest import ingest_paths

                t0 = time.perf_counter()
                summary = ingest_paths(
                    r.registry, ingest_paths_, config=r.config.ingest, profile_root=r.root, workers=workers
                )
                if not quiet or summary.quarantined:
                    print_ingest_summary(summary, time.perf_counter() - t0, console)
            r.apply_automatic_targets(online=True)
            for note in r.target_notes:  # what was chosen for each field, every run: a person checks it
                log.info(note)
                err_console.print(f"warning: {note}", soft_wrap=True, markup=False, highlight=False)
            from darkroom.pipeline.targets import planet_ephemerides

            ephemerides = planet_ephemerides(
                r.root, [t.name for t in r.config.targets], r.config.names, online=True
            )
            for name, eph in ephemerides.items():
                log.info("target %s: transit ephemeris of %s from the %s", name, eph.planet, eph.reference)
            stages = all_stages(r.root, r.config)
            if redo:
                forgotten = forget_from(r.registry, stages, redo)
                if not quiet:
                    console.print(f"forgot the products of: {', '.join(forgotten)}")
            chosen = select_stages(stages, until=until, only=only)
            executor = make_executor(workers=workers, scheduler=scheduler)
            if frames_to_calibrate(r.registry, chosen) >= 2:
                executor.start()  # frames to reduce: the workers start while the masters are made
            try:
                reports = drive_stages(
                    r.registry,
                    chosen,
                    executor=executor,
                    retry_failed=retry_failed,
                    console=err_console,
                    quiet=quiet,
                    freeze_between_stages=_ENDS_WITH_THE_PROCESS,
                )
            finally:
                executor.close()
        night = run_summary(r, reports)
        if report and chosen and chosen[-1].name == stages[-1].name:
            night.report = _write_report_quietly(r)
        night.nothing_made += r.targets_left_out
        if (
            not r.config.targets
            and not night.lightcurves
            and not r.targets_left_out
            and not r.config.surveys.run
        ):
            night.nothing_made.append(
                "no light curves: no targets in darkroom.yaml and no light frame names an OBJECT; "
                f"add targets:, or run darkroom lightcurve {r.root} --ra RA --dec DEC"
            )
        unsolved = _unsolved_frames(r.registry, chosen)
        r.close()
    except DarkroomError as exc:
        _fail(exc)
    if not quiet:
        print_reports(reports, console)
    night.log_file = _LOG_FILE[0] if _LOG_FILE else None
    night.n_hidden_warnings = _CONSOLE_FILTER[0].n_hidden() if _CONSOLE_FILTER else 0
    failed = [(rep.stage, key, reason) for rep in reports for key, reason in rep.failures]
    if unsolved:
        # a frame without a solution is a failure of the night, not a quiet footnote
        console.print(f"astrometry failed for {len(unsolved)} frame(s):")
        for name, reason in unsolved:
            console.print(f"  {name}: {reason}", soft_wrap=True, markup=False, highlight=False)
        failed += [("astrometry", name, reason) for name, reason in unsolved]
    if not quiet:
        print_run_summary(night, console)
    elif failed:
        for stage, key, reason in failed:
            err_console.print(f"{stage} {key}: {reason}", soft_wrap=True, markup=False, highlight=False)
    if failed:
        raise typer.Exit(EXIT_FAILED_UNITS)


def _predicted_contacts(r, name: str | None, lc) -> dict[str, float] | None:
    """Predicted transit times near a light curve of a known planet (cached ephemerides only)."""
    import numpy as np

    from darkroom.pipeline.targets import planet_ephemerides
    from darkroom.timeseries.ephemeris import predict_transit

    target = name or lc.meta.get("target_name")
    if not target or "bjd_tdb" not in lc.colnames or not len(lc):
        return None
    known = {t.name.replace("-", "").replace(" ", "").lower(): t.name for t in r.config.targets}
    target = known.get(str(target).replace("-", "").replace(" ", "").lower(), target)
    eph = planet_ephemerides(r.root, [target], r.config.names, online=False).get(target)
    t = np.asarray(lc["bjd_tdb"], float)
    t = t[np.isfinite(t)]
    return predict_transit(eph, float(np.median(t))).as_dict() if eph is not None and len(t) else None


def _write_report_quietly(r) -> Path | None:
    """The night report after a full run (its index page); a failure is a warning, not an error."""
    from darkroom.pipeline.report import write_reports

    try:
        paths = write_reports(r)
    except Exception as exc:
        log.warning("the report could not be written: %s", " ".join(str(exc).split())[:200])
        log.debug("report failure", exc_info=True)
        return None
    index = [p for p in paths if Path(p).name == "index.html"]
    return Path(index[0] if index else paths[-1]) if paths else None


def _unsolved_frames(registry, stages) -> list[tuple[str, str]]:
    """(raw file name, reason) of the images the run's astrometry stage left unsolved."""
    from sqlalchemy import select

    from darkroom.repo.models import AstromSolution, Exposure, Image

    prov = next((st.provenance_id for st in stages if st.name == "astrometry"), None)
    if prov is None:
        return []
    with registry.session() as s:
        rows = s.execute(
            select(Exposure.path, AstromSolution.reason)
            .join(Image, Image.exposure_id == Exposure.id)
            .join(AstromSolution, AstromSolution.image_id == Image.id)
            .where(AstromSolution.provenance_id == prov, AstromSolution.flag == "failed")
        ).all()
    return sorted((Path(path).name, str(reason or "not solved")) for path, reason in rows)


@app.command()
def lightcurve(
    repo: RepoArg,
    ra: Annotated[
        str | None,
        typer.Option(
            "--ra", help="right ascension (ICRS): degrees (240.5493) or hours 16:02:11.84 / 16h02m11.84s"
        ),
    ] = None,
    dec: Annotated[
        str | None,
        typer.Option("--dec", help="declination (ICRS): degrees (28.1696) or +28:10:10.4 / 28d10m10.4s"),
    ] = None,
    radius: Annotated[
        float | None, typer.Option("--radius", min=0.01, help="match radius [arcsec] (default: configured)")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="a target of darkroom.yaml or an id of the local refcat")
    ] = None,
    pixel: Annotated[
        tuple[float, float] | None,
        typer.Option("--pixel", help="0-based pixel X Y in --frame (fields without an absolute WCS)"),
    ] = None,
    frame: Annotated[Path | None, typer.Option("--frame", help="raw or calibrated file of --pixel")] = None,
    source: Annotated[int | None, typer.Option("--source", help="a source id")] = None,
    differential: Annotated[
        bool | None,
        typer.Option(
            "--differential/--absolute",
            help="divide by a comparison ensemble (default: photometry.lightcurves.lightcurve.differential "
            "of darkroom.yaml)",
            show_default=False,
        ),
    ] = None,
    comparison: Annotated[
        list[int] | None, typer.Option("--comparison", help="comparison source id (repeatable)")
    ] = None,
    keep_flagged: Annotated[
        bool, typer.Option("--keep-flagged", help="keep frames flagged for transparency (flags set)")
    ] = False,
    season_gap: Annotated[
        float | None, typer.Option("--season-gap", min=0.001, help="a longer gap starts a new season [day]")
    ] = None,
    split: Annotated[bool, typer.Option("--split", help="one output file per filter and season")] = False,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="output .csv, .ecsv or .parquet")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="PNG: points, binned curve, ensemble")] = None,
    bin_minutes: Annotated[
        float | None, typer.Option("--bin", min=0.01, help="plot bin width [minute]")
    ] = None,
    db: Annotated[str | None, typer.Option("--db", help="registry URL overriding darkroom.yaml")] = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Light curve of one object (by --ra/--dec, --name, --pixel/--frame or --source), BJD_TDB."""
    import numpy as np

    from darkroom.facade import Repository
    from darkroom.pipeline._products import safe_name
    from darkroom.timeseries import (
        plot_lightcurve,
        point_to_point_scatter,
        split_lightcurve,
        write_lightcurve,
    )

    _setup_logging(quiet, repo)
    overrides = list(set_ or ())
    if season_gap is not None:
        overrides.append(f"photometry.lightcurves.season_gap_days={season_gap}")
    try:
        _check_output_folder(out, "-o/--out")
        _check_output_folder(plot, "--plot")
        ra_deg, dec_deg = parse_ra(ra), parse_dec(dec)
        r = Repository(repo, db_url=db, overrides=overrides)
        if name is not None and ra is None and pixel is None and source is None:
            survey_lc = r.survey_lightcurves(name)  # a survey target (darkroom survey ztf)
            if len(survey_lc):
                r.close()
                _survey_lightcurve_out(name, survey_lc, out, plot)
                return
        if differential is None:  # the repository's setting, as the lightcurves stage uses it
            differential = r.config.photometry.lightcurves.lightcurve.differential
        lc = r.lightcurve(
            ra=ra_deg,
            dec=dec_deg,
            radius_arcsec=radius,
            name=name,
            pixel=pixel,
            frame=frame,
            source_id=source,
            differential=differential,
            comparison=comparison,
            keep_flagged=keep_flagged or None,
        )
        bin_min = bin_minutes or r.config.photometry.lightcurves.bin_minutes
        contacts = _predicted_contacts(r, name, lc)
        r.close()
        parts = {("", 0): lc}
        if split:
            parts = split_lightcurve(lc, season_gap_days=r.config.photometry.lightcurves.season_gap_days)
        written = []
        for (band, season), part in parts.items():
            suffix = f"_{safe_name(band or 'none')}_s{season}" if split else ""
            if out is not None:
                written.append(write_lightcurve(part, out.with_name(f"{out.stem}{suffix}{out.suffix}")))
            if plot is not None and len(part):
                title = f"{name or lc.meta.get('field') or ''} source {lc.meta['source_id']}".strip()
                written.append(
                    plot_lightcurve(
                        part,
                        plot.with_name(f"{plot.stem}{suffix}{plot.suffix}"),
                        bin_minutes=bin_min,
                        title=title,
                        contacts=contacts,
                    )
                )
    except DarkroomError as exc:
        _fail(exc)
    column = "rel_flux" if differential else "flux"
    flux = np.asarray(lc[column], dtype=float)
    scatter = point_to_point_scatter(flux) / abs(float(np.nanmedian(flux))) if len(lc) > 1 else float("nan")
    comps = {
        b: info.get("source_ids", info.get("error")) for b, info in lc.meta.get("comparison", {}).items()
    }
    t = RichTable(title=f"source {lc.meta['source_id']} ({lc.meta.get('field') or ''})")
    for col in ("points", "filters", "excluded frames", "comparison stars", "p2p scatter"):
        t.add_column(col)
    t.add_row(
        str(len(lc)),
        ", ".join(sorted({str(b) for b in lc["filter"]})) or "-",
        str(len(lc.meta.get("excluded_image_ids", []))),
        "; ".join(f"{b}: {v}" for b, v in comps.items()) if differential else "-",
        f"{1e3 * scatter:.2f} ppt",
    )
    console.print(t)
    for path in written:
        console.print(f"wrote {path}")


def _survey_lightcurve_out(name: str, lc, out: Path | None, plot: Path | None) -> None:
    """Summary table, then the stacked survey light curve to ``out`` and a PNG to ``plot``."""
    import numpy as np

    from darkroom.surveys.plot import plot_survey_lightcurve
    from darkroom.timeseries import write_lightcurve

    t = RichTable(title=f"survey light curves of {escape(name)}")
    for col in ("survey", "band", "season", "points", "flagged", "median mag"):
        t.add_column(col, justify="left" if col in ("survey", "band") else "right")
    keys = sorted(
        {(str(a), str(b), str(c)) for a, b, c in zip(lc["survey"], lc["band"], lc["season"], strict=True)}
    )
    for survey, band, season in keys:
        sel = (lc["survey"] == survey) & (lc["band"] == band) & (lc["season"] == season)
        flagged = int(np.sum(np.asarray(lc["catflags"])[sel] != 0)) if "catflags" in lc.colnames else 0
        t.add_row(
            survey, band, season, str(int(sel.sum())), str(flagged), f"{np.nanmedian(lc['mag'][sel]):.3f}"
        )
    console.print(t)
    if out is not None:
        console.print(f"wrote {write_lightcurve(lc, out)}")
    if plot is not None:
        console.print(f"wrote {plot_survey_lightcurve(lc, plot, title=name)}")


def _run_section_stages(
    repo: Path,
    section: str,
    *,
    db: str | None,
    set_: list[str] | None,
    workers: int,
    retry_failed: bool,
    quiet: bool,
) -> None:
    """Run the stages whose settings live in one darkroom.yaml section (same provenance chain as
    ``darkroom run``), print, exit 2 on failures."""
    from darkroom.facade import Repository
    from darkroom.pipeline.drive import drive_stages, print_reports
    from darkroom.pipeline.executors import make_executor
    from darkroom.pipeline.run import section_stages

    _setup_logging(quiet, repo)
    try:
        r = Repository(repo, db_url=db, overrides=set_ or ())
        stages = section_stages(r.root, r.config, section)
        executor = make_executor(workers=workers)
        try:
            reports = drive_stages(
                r.registry,
                stages,
                executor=executor,
                retry_failed=retry_failed,
                console=err_console,
                quiet=quiet,
            )
        finally:
            executor.close()
        r.close()
    except DarkroomError as exc:
        _fail(exc)
    print_reports(reports, console)
    if any(rep.n_failed for rep in reports):
        raise typer.Exit(2)


WorkersOpt = Annotated[
    int, typer.Option("--workers", min=0, help="worker processes on this machine (0: serial)")
]
RetryOpt = Annotated[bool, typer.Option("--retry-failed", help="run failed units again")]
DbOpt = Annotated[str | None, typer.Option("--db", help="registry URL overriding darkroom.yaml")]


@app.command()
def calibrate(
    repo: RepoArg,
    db: DbOpt = None,
    set_: SetOpt = None,
    workers: WorkersOpt = 0,
    retry_failed: RetryOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build master calibrations and calibrate every registered light frame (skips what is done)."""
    _run_section_stages(
        repo, "calib", db=db, set_=set_, workers=workers, retry_failed=retry_failed, quiet=quiet
    )


@app.command()
def astrometry(
    repo: RepoArg,
    db: DbOpt = None,
    set_: SetOpt = None,
    workers: WorkersOpt = 0,
    retry_failed: RetryOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Extract sources, flag poor frames and solve the astrometry of calibrated images; skips what is done."""
    _run_section_stages(
        repo, "astrometry", db=db, set_=set_, workers=workers, retry_failed=retry_failed, quiet=quiet
    )


@app.command()
def report(
    repo: RepoArg,
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="folder for the HTML pages (default REPO/reports)")
    ] = None,
    night: Annotated[
        list[str] | None, typer.Option("--night", help="only this night, YYYY-MM-DD (repeatable)")
    ] = None,
    db: Annotated[str | None, typer.Option("--db", help="registry URL overriding darkroom.yaml")] = None,
    set_: SetOpt = None,
) -> None:
    """Write a self-contained HTML report per night: frames, masters, quality, failures, light curves."""
    from darkroom.facade import Repository
    from darkroom.pipeline.report import write_reports

    try:
        r = Repository(repo, db_url=db, overrides=set_ or ())
        paths = write_reports(r, out, nights=night or None)
        r.close()
    except DarkroomError as exc:
        _fail(exc)
    for p in paths:
        console.print(f"report: {p}", soft_wrap=True)
    if not paths:
        console.print("no nights registered yet")


@app.command()
def inspect(
    files: Annotated[list[Path], typer.Argument(help="FITS files")],
    profiles: Annotated[
        list[Path] | None, typer.Option("--profiles", help="folder of user instrument profiles (repeatable)")
    ] = None,
) -> None:
    """Print the normalised metadata of FITS files and which profile matched.

    A file that ingest would quarantine shows the same one-line reason (exit status 1).
    """
    from darkroom.instruments import describe, load_profiles
    from darkroom.pipeline.ingest import examine_file

    try:
        loaded = load_profiles(extra_dirs=tuple(profiles or ()))
    except DarkroomError as exc:
        _fail(exc)
    status_code = 0
    for path in files:
        item = examine_file(path, loaded, checksum=False)
        if item.meta is None or item.reason is not None:
            err_console.print(
                f"[bold]{escape(str(path))}[/]: [red]{escape(item.reason or '')}[/]", soft_wrap=True
            )
            status_code = 1
            if item.meta is None:
                continue
        meta = item.meta
        t = RichTable(title=str(path), show_header=False)
        t.add_column("field", style="bold")
        t.add_column("value")
        for key, value in describe(meta):
            t.add_row(escape(key), escape(value))
        console.print(t)
    raise typer.Exit(status_code)


@app.command()
def demo(
    out: Annotated[
        Path | None, typer.Option("--out", help="folder for the simulated night and repository")
    ] = None,
    n_science: Annotated[int, typer.Option("--frames", min=2, help="number of science frames")] = 36,
    size: Annotated[int, typer.Option("--size", min=128, max=4096, help="frame size [pixels, square]")] = 512,
    seed: Annotated[int, typer.Option(help="random seed of the simulated night")] = 1,
    workers: Annotated[
        int, typer.Option("--workers", min=0, help="worker processes on this machine (0: serial)")
    ] = 0,
    quiet: QuietOpt = False,
) -> None:
    """Simulate a night, run the whole pipeline on it, print the recovered figures next to the truth."""
    from darkroom.demo import run_demo

    _setup_logging(quiet)
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="darkroom-demo-"))
    try:
        figures = run_demo(
            out, n_science=n_science, size=size, seed=seed, workers=workers, console=console, quiet=quiet
        )
    except DarkroomError as exc:
        _fail(exc)
    if figures["n_failed"]:
        raise typer.Exit(2)


__import__("darkroom.commands.surveys", fromlist=["register"]).register(app)
__import__("darkroom.commands.products", fromlist=["register"]).register(app)
__import__("darkroom.commands.imaging", fromlist=["register"]).register(app)
__import__("darkroom.commands.analysis", fromlist=["register"]).register(app)
__import__("darkroom.commands.catalog", fromlist=["register"]).register(app)


def main() -> None:  # pragma: no cover - console entry
    """The ``darkroom`` command (console script): :data:`app`, then the interpreter exits."""
    global _ENDS_WITH_THE_PROCESS
    _ENDS_WITH_THE_PROCESS = True
    from darkroom._allocator import keep_freed_memory

    keep_freed_memory()  # frame-sized temporaries reused, not faulted in anew for every frame
    try:
        app()
    finally:
        # The interpreter's last garbage collections walk every object that astropy, SQLAlchemy,
        # matplotlib and the run made (~0.4 s after a night, as long as a light stage): the
        # command is over, its files and registry are closed, and no finaliser of a cycle is
        # left to matter. Frozen objects are not walked; they are still freed with the process.
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
