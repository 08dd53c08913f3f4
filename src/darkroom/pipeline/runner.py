"""Drive stages over what is registered: serially, on local processes, or on Dask.

Only the driver touches the registry. For each stage it records the provenance,
plans the units not yet done, marks their tasks running, submits ``stage.run`` to
the executor, and as each result arrives calls ``stage.record`` and marks the
task done in the same transaction. An exception in a unit marks that task failed
with a one-line reason (the traceback goes to the log); when the error says the
input is at fault, the exposure is quarantined. The run goes on.
"""

from __future__ import annotations

import logging
import socket
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from darkroom.errors import DarkroomError
from darkroom.pipeline.stage import Stage, Unit
from darkroom.repo.models import Exposure, Task, utcnow
from darkroom.repo.registry import Registry

__all__ = ["Executor", "SerialExecutor", "StageReport", "one_line", "run_stage"]

log = logging.getLogger(__name__)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The one-line reason recorded for a failed unit."""
    if isinstance(exc, DarkroomError):
        text = exc.reason
    else:
        text = f"{exc.__class__.__name__}: {' '.join(str(exc).split())}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Executor(ABC):
    """Runs ``fn(unit)`` for many units and yields ``(unit, result, error)`` as they finish."""

    name = "base"

    @abstractmethod
    def map_units(
        self, fn: Callable[[Unit], Any], units: list[Unit]
    ) -> Iterable[tuple[Unit, Any, BaseException | None]]:
        """Yield each unit with its result, or with the exception it raised."""

    def close(self) -> None:
        return None


class SerialExecutor(Executor):
    """In-process, one unit after another (the default, and the reference for the others)."""

    name = "serial"

    def map_units(self, fn, units):
        for unit in units:
            try:
                yield unit, fn(unit), None
            except Exception as exc:
                log.debug("unit %s failed:\n%s", unit.key, traceback.format_exc())
                yield unit, None, exc


@dataclass
class StageReport:
    """What one stage did in one run."""

    stage: str
    provenance_id: str
    n_planned: int = 0
    n_done: int = 0
    n_failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def _task(session, stage: Stage, unit: Unit) -> Task:
    task = session.scalars(
        select(Task).where(
            Task.stage == stage.name, Task.key == unit.key, Task.provenance_id == stage.provenance_id
        )
    ).one_or_none()
    if task is None:
        task = Task(
            stage=stage.name, key=unit.key, provenance_id=stage.provenance_id, state="pending", attempts=0
        )
        session.add(task)
    return task


def run_stage(
    registry: Registry,
    stage: Stage,
    executor: Executor | None = None,
    *,
    retry_failed: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> StageReport:
    """Plan, run and record one stage. Units that failed before are retried only with ``retry_failed``."""
    import time

    t0 = time.perf_counter()
    executor = executor or SerialExecutor()
    report = StageReport(stage=stage.name, provenance_id=stage.provenance_id)
    with registry.session() as s:
        stage.ensure_provenance(s)
        units = stage.plan(s)
        failed_before = set(
            s.scalars(
                select(Task.key).where(
                    Task.stage == stage.name,
                    Task.provenance_id == stage.provenance_id,
                    Task.state == "failed",
                )
            )
        )
    if not retry_failed:
        units = [u for u in units if u.key not in failed_before]
    report.n_planned = len(units)
    if progress:
        progress(0, len(units))
    if not units:
        report.seconds = time.perf_counter() - t0
        return report
    worker = socket.gethostname()
    with registry.session() as s:
        for unit in units:
            task = _task(s, stage, unit)
            task.state, task.reason, task.worker = "running", None, worker
            task.attempts = (task.attempts or 0) + 1
            task.started_utc, task.finished_utc = utcnow(), None
    for n_finished, (unit, result, error) in enumerate(executor.map_units(stage.run, units), start=1):
        if error is None:
            try:
                with registry.session() as s:
                    stage.record(s, unit, result)
                    task = _task(s, stage, unit)
                    task.state, task.reason, task.finished_utc = "done", None, utcnow()
                report.n_done += 1
            except Exception as exc:  # recording failed: the unit failed, the run goes on
                error = exc
        if error is not None:
            reason = one_line(error)
            log.warning("%s %s failed: %s", stage.name, unit.key, reason)
            if not isinstance(error, DarkroomError):
                log.info("".join(traceback.format_exception(error)))
            with registry.session() as s:
                task = _task(s, stage, unit)
                task.state, task.reason, task.finished_utc = "failed", reason, utcnow()
                if isinstance(error, DarkroomError) and error.quarantine and unit.exposure_id is not None:
                    exp = s.get(Exposure, unit.exposure_id)
                    if exp is not None:
                        exp.state, exp.reason = "quarantined", f"{stage.name}: {reason}"
            report.n_failed += 1
            report.failures.append((unit.key, reason))
        if progress:
            progress(n_finished, len(units))
    report.seconds = time.perf_counter() - t0
    return report
