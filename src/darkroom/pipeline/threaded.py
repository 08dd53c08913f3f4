"""The threaded driver of ``darkroom survey ...``: a stage's units on a pool of threads, results
recorded by the calling thread alone in small batches.

Workers (threads: the work is waiting on the network and on bzip2/zlib, which release the GIL)
fetch and write product files atomically under deterministic names; only the driver thread
writes the registry. A run killed at any moment therefore leaves no half-written file and no
row without its file; the next run asks again for what has no row (and overwrites the same
names). ``darkroom run`` drives the same stages through :mod:`darkroom.pipeline.runner`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from darkroom.pipeline.runner import one_line, record_provenance
from darkroom.pipeline.stage import Stage, Unit
from darkroom.repo.registry import Registry

__all__ = ["DriveReport", "drive_stage", "drive_threaded"]

log = logging.getLogger(__name__)


@dataclass
class DriveReport:
    """What a threaded survey step did."""

    step: str
    n_planned: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, state: str) -> None:
        self.counts[state] = self.counts.get(state, 0) + 1


def drive_threaded(
    registry: Registry,
    stage: Stage,
    units: list[Unit],
    *,
    workers: int,
    progress: Callable[[int, int], None] | None = None,
    commit_every: int = 64,
    commit_seconds: float = 1.0,
) -> DriveReport:
    """Run ``stage.run`` on a pool of threads with at most ``2 * workers`` units in flight; the
    calling thread alone records the results (``stage.record``), committing every
    ``commit_every`` results or ``commit_seconds``. A unit whose ``run`` raises is recorded by
    ``stage.record_failure`` with the one-line reason."""
    t0 = time.perf_counter()
    report = DriveReport(step=stage.name, n_planned=len(units))
    if progress:
        progress(0, len(units))
    pending: list[tuple[Unit, Any, BaseException | None]] = []
    last_commit = time.monotonic()
    n_done = 0

    def record_batch(batch: list[tuple[Unit, Any, BaseException | None]]) -> None:
        with registry.session() as s:
            prefetch = getattr(stage, "prefetch", None)
            if prefetch is not None:
                prefetch(s, [unit for unit, _, _ in batch])
            for unit, result, error in batch:
                if error is None:
                    state = stage.record(s, unit, result)
                else:
                    reason = one_line(error)
                    log.warning("%s %s failed: %s", stage.name, unit.key, reason)
                    stage.record_failure(s, unit, reason)
                    report.failures.append((unit.key, reason))
                    state = "failed"
                report.add(str(state))

    def flush() -> None:
        nonlocal last_commit
        if not pending:
            return
        saved = dict(report.counts), len(report.failures)
        try:
            record_batch(pending)
        except Exception:
            # one result could not be recorded: undo the batch's counts, record one by one
            report.counts, report.failures = saved[0], report.failures[: saved[1]]
            for item in pending:
                try:
                    record_batch([item])
                except Exception as exc:
                    record_batch([(item[0], None, exc)])
        pending.clear()
        last_commit = time.monotonic()

    source: Iterator[Unit] = iter(units)
    in_flight: dict[Future, Unit] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"darkroom-{stage.name}") as pool:
        for unit in source:
            in_flight[pool.submit(stage.run, unit)] = unit
            if len(in_flight) >= 2 * workers:
                break
        while in_flight:
            finished, _ = wait(list(in_flight), timeout=commit_seconds, return_when=FIRST_COMPLETED)
            for fut in finished:
                unit = in_flight.pop(fut)
                exc = fut.exception()
                pending.append((unit, None if exc else fut.result(), exc))
                n_done += 1
                nxt = next(source, None)
                if nxt is not None:
                    in_flight[pool.submit(stage.run, nxt)] = nxt
            if len(pending) >= commit_every or time.monotonic() - last_commit >= commit_seconds:
                flush()
            if progress:
                progress(n_done, len(units))
    flush()
    report.seconds = time.perf_counter() - t0
    return report


def drive_stage(
    registry: Registry, stage: Stage, *, progress: Callable[[int, int], None] | None = None
) -> DriveReport:
    """Record the stage's provenance, plan its units and drive them on ``stage.max_in_flight``
    threads (``darkroom survey ...``: the provenance is the one ``darkroom run`` records)."""
    record_provenance(registry, stage)
    with registry.session() as s:
        units = stage.plan(s)
    return drive_threaded(registry, stage, units, workers=stage.max_in_flight, progress=progress)
