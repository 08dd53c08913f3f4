"""Run a list of stages over a repository with a progress bar per stage.

The command-line face of the runner: ``darkroom calibrate`` (and later ``darkroom
run``) build their stages and hand them here.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from contextlib import AbstractContextManager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from darkroom.config import IngestConfig
from darkroom.io.keep import keeping, memory_budget_bytes, release_kept
from darkroom.pipeline.runner import Executor, StageReport, run_stage, wait_for_others, worker_id
from darkroom.pipeline.stage import Stage
from darkroom.repo.models import Task
from darkroom.repo.registry import Registry

__all__ = ["drive_stages", "frames_to_calibrate", "print_ingest_summary", "print_reports", "release_claims"]


def drive_stages(
    registry: Registry,
    stages: Sequence[Stage],
    *,
    executor: Executor | None = None,
    retry_failed: bool = False,
    console: Console | None = None,
    quiet: bool = False,
    freeze_between_stages: bool = False,
) -> list[StageReport]:
    """Run ``stages`` in order; return one report per stage.

    ``freeze_between_stages`` (for a process that ends with the run: the ``darkroom``
    command): before each stage, every object alive is set aside from Python's garbage
    collector (``gc.freeze``), so that its full collections stop walking the millions of
    objects the libraries' imports made (ARCSAT night: 0.39 -> 0.15 s of full collections).
    Cycles that are garbage at that moment are kept until the process ends (a few figures'
    worth in a run)."""
    console = console or Console(stderr=True)
    reports = []
    with Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    ) as bar:
        try:
            for i, stage in enumerate(stages):
                task = bar.add_task(stage.name, total=None)
                wait_for_others(registry, [st.name for st in stages[:i]])

                def progress(done: int, total: int, _task=task) -> None:
                    bar.update(_task, completed=done, total=max(total, 1))

                if freeze_between_stages:
                    gc.freeze()
                reports.append(
                    run_stage(registry, stage, executor, retry_failed=retry_failed, progress=progress)
                )
                if not any(st.reads_raw_files for st in stages[i + 1 :]):
                    release_kept()  # raw frames ingest kept for the masters and calibrate
        except KeyboardInterrupt:
            release_claims(registry)
            raise
    return reports


def raw_frames_kept(config: IngestConfig, *, serial: bool) -> AbstractContextManager:
    """Within the block, raw frames read whole by ingest stay in memory (``config.keep_in_memory_mb``
    at most) for the masters and calibrate, so that each file is decompressed and parsed once
    (:mod:`darkroom.io.keep`); the stages take them out as they use them, and what is left goes
    after the last stage that reads raw frames (:func:`drive_stages`) or at the end of the block.

    Only for ``serial`` runs: the workers of a parallel run are other processes. ARCSAT night,
    serially: the masters and calibrate ~0.9 s faster (~10 ms a frame) for ~200 MB held at most.
    """
    return keeping(memory_budget_bytes(config.keep_in_memory_mb) if serial else 0)


def frames_to_calibrate(registry: Registry, stages: Sequence[Stage]) -> int:
    """Light frames the ``calibrate`` stage among ``stages`` has not made an image of yet (0 when
    it is not among them): the per-frame work ahead of a run."""
    from sqlalchemy import func, select

    from darkroom.repo.models import Exposure, Image

    prov = next((st.provenance_id for st in stages if st.name == "calibrate"), None)
    if prov is None:
        return 0
    with registry.session() as s:
        n_light = s.scalar(
            select(func.count())
            .select_from(Exposure)
            .where(Exposure.state == "ok", Exposure.frame_type == "light")
        )
        n_done = s.scalar(select(func.count()).select_from(Image).where(Image.provenance_id == prov))
    return max(int(n_light or 0) - int(n_done or 0), 0)


def release_claims(registry: Registry) -> int:
    """Put this process's 'running' tasks back to 'pending' (after Ctrl-C); return how many.

    Their products were not recorded, so the next run plans and runs them again; status
    never shows a task stuck "running" under a driver that has gone.
    """
    from sqlalchemy import update

    with registry.session() as s:
        n = s.execute(
            update(Task)
            .where(Task.state == "running", Task.worker == worker_id())
            .values(state="pending", worker=None, started_utc=None, reason="interrupted")
        ).rowcount
    return int(n or 0)


def print_reports(reports: Sequence[StageReport], console: Console) -> None:
    """A table of what each stage did, then the failures with their reasons."""
    t = RichTable(title="stages")
    for col in ("stage", "planned", "done", "failed", "seconds"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for r in reports:
        t.add_row(r.stage, str(r.n_planned), str(r.n_done), str(r.n_failed), f"{r.seconds:.1f}")
    console.print(t)
    failures = [(r.stage, key, reason) for r in reports for key, reason in r.failures]
    if failures:
        f = RichTable(title="failed")
        for col in ("stage", "unit", "reason"):
            f.add_column(col)
        for row in failures:
            f.add_row(*(escape(c) for c in row))
        console.print(f)


def print_ingest_summary(summary, seconds: float, console: Console) -> None:
    """What an ingest registered (a table by night, type, filter), then the quarantined files."""
    table = RichTable(title="registered", show_lines=False)
    for col in ("night", "type", "filter", "exptime [s]", "files"):
        table.add_column(escape(col), justify="right" if col in ("files", "exptime [s]") else "left")
    for night, ftype, filt, exptime, n in summary.table_rows():
        table.add_row(night, ftype, filt, exptime, str(n))
    if summary.registered:
        console.print(table)
    mb = summary.n_bytes / 1e6
    console.print(
        f"{summary.n_files} FITS files seen: {len(summary.registered)} registered, "
        f"{len(summary.quarantined)} quarantined, {summary.n_known} already known "
        f"({mb:.1f} MB in {seconds:.1f} s)"
    )
    if summary.quarantined:
        # One line per file (not a table) so long paths stay whole and logs stay greppable.
        console.print(f"quarantined ({len(summary.quarantined)}):")
        for item in summary.quarantined:
            console.print(f"  {item.path}: {item.reason}", soft_wrap=True, markup=False, highlight=False)
    if getattr(summary, "skipped", None):
        console.print(f"skipped, never opened ({len(summary.skipped)}):")
        for path, reason in summary.skipped:
            console.print(f"  {path}: {reason}", soft_wrap=True, markup=False, highlight=False)
