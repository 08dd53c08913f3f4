"""Drive stages over what is registered: serially, on local processes, or on Dask.

Only the driver touches the registry. For each stage it records the provenance,
plans the units not yet done, marks their tasks running, submits ``stage.run`` to
the executor, and as results arrive calls ``stage.record`` and marks the
tasks done in the same transaction (a few units a transaction, in the order they were
handed out). An exception in a unit marks that task failed
with a one-line reason (the traceback goes to the log); when the error says the
input is at fault, the stage sets its input aside (:meth:`Stage.quarantine`). The
run goes on. A stage that declares ``executor = "thread"`` (network-bound work) runs
on a :class:`ThreadExecutor` with at most ``max_in_flight`` units at once, whatever
executor the run was given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from darkroom.errors import DarkroomError
from darkroom.pipeline.stage import Stage, Unit
from darkroom.repo.models import Task, utcnow
from darkroom.repo.registry import Registry

__all__ = [
    "Executor",
    "SerialExecutor",
    "StageReport",
    "ThreadExecutor",
    "claim_units",
    "one_line",
    "record_provenance",
    "run_stage",
    "settled",
    "wait_for_others",
    "worker_id",
]

log = logging.getLogger(__name__)


def settled(stage: Stage, result: Any) -> tuple[Any, BaseException | None]:
    """``stage.settle(result)`` as an outcome: the result with its deferred write done, or the
    write's error (the unit then failed)."""
    try:
        return stage.settle(result), None
    except Exception as exc:
        return None, exc


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
        self, fn: Callable[[Unit], Any], units: Iterable[Unit]
    ) -> Iterable[tuple[Unit, Any, BaseException | None]]:
        """Yield each unit with its result, or with the exception it raised.

        ``units`` may be a lazy iterable: take from it only as capacity frees up.
        """

    def start(self) -> None:
        """Get ready for units (workers started) without waiting; by default nothing to do."""
        return None

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


class ThreadExecutor(Executor):
    """A thread pool for I/O-bound units (downloads): at most ``max_in_flight`` at once.

    Units are taken from the (lazy) iterable only as slots free up, so the runner
    claims a unit just before it starts; results are yielded as they finish.
    """

    name = "thread"

    def __init__(self, max_in_flight: int = 4) -> None:
        self.max_in_flight = max(int(max_in_flight), 1)

    def map_units(self, fn, units):
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        source = iter(units)
        with ThreadPoolExecutor(max_workers=self.max_in_flight, thread_name_prefix="darkroom") as pool:
            running = {}

            def submit_next() -> bool:
                unit = next(source, None)
                if unit is None:
                    return False
                running[pool.submit(fn, unit)] = unit
                return True

            for _ in range(self.max_in_flight):
                if not submit_next():
                    break
            while running:
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    unit = running.pop(fut)
                    exc = fut.exception()
                    if exc is not None:
                        log.debug("unit %s failed: %s", unit.key, exc)
                        yield unit, None, exc
                    else:
                        yield unit, fut.result(), None
                    submit_next()


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


def worker_id() -> str:
    """Who claims a task: ``host:pid`` of the driver process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim_is_stale(task: Task, *, stale_after_s: float) -> bool:
    """A 'running' task whose driver is gone (same host, pid dead) or that is older than the limit."""
    host, _, pid = (task.worker or "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        if int(pid) == os.getpid():
            return True  # our own earlier claim, e.g. an interrupted call in this process
    if task.started_utc is None:
        return True
    return (utcnow() - task.started_utc).total_seconds() > stale_after_s


#: units claimed in one registry transaction, and finished units recorded in one: a
#: transaction costs ~1-2 ms of ORM and SQL work, as much as a light unit's own recording
CLAIM_BATCH = 4
#: the share of a stage's work that must lie outside its largest unit for workers to run it
WORKERS_MIN_SHARE = 0.25
RECORD_BATCH = 8
#: finished units wait at most this long [s] for the rest of their batch before being recorded
RECORD_WAIT_S = 1.0


def claim_units(
    registry: Registry, stage: Stage, units: list[Unit], *, stale_after_s: float = 6 * 3600
) -> list[Unit]:
    """Mark the units' tasks running for this process; return the units it may run.

    A unit whose task is done, or running under another live driver, is left out.
    On PostgreSQL the task rows are locked (``FOR UPDATE SKIP LOCKED``) and a
    concurrent insert of the same natural key loses on the unique constraint, so two
    ``darkroom run`` processes never run the same unit. The units are claimed in one
    transaction; when another process inserted one of their tasks first, each is claimed
    on its own.
    """
    try:
        with registry.session() as s:
            return _claim(s, registry, stage, units, stale_after_s)
    except IntegrityError:  # another process inserted one of these tasks first
        if len(units) == 1:
            return []
        return [u for u in units if claim_units(registry, stage, [u], stale_after_s=stale_after_s)]


def _claim(session, registry: Registry, stage: Stage, units: list[Unit], stale_after_s: float) -> list[Unit]:
    me = worker_id()
    keys = [u.key for u in units]
    mine = (Task.stage == stage.name, Task.provenance_id == stage.provenance_id)
    q = select(Task).where(*mine, Task.key.in_(keys))
    postgres = registry.backend == "postgresql"
    if postgres:
        q = q.with_for_update(skip_locked=True)
    tasks = {t.key: t for t in session.scalars(q)}
    locked: set[str] = set()
    if postgres and len(tasks) < len(keys):  # rows locked by another process right now are not seen
        locked = set(session.scalars(select(Task.key).where(*mine, Task.key.in_(set(keys) - set(tasks)))))
    claimed = []
    for unit in units:
        task = tasks.get(unit.key)
        if task is None:
            if unit.key in locked:
                continue
            task = Task(stage=stage.name, key=unit.key, provenance_id=stage.provenance_id, attempts=0)
            session.add(task)
        elif task.state == "done" or (
            task.state == "running"
            and task.worker != me
            and not _claim_is_stale(task, stale_after_s=stale_after_s)
        ):
            continue
        task.state, task.reason, task.worker = "running", None, me
        task.attempts = (task.attempts or 0) + 1
        task.started_utc, task.finished_utc = utcnow(), None
        claimed.append(unit)
    return claimed


def wait_for_others(
    registry: Registry,
    stage_names: list[str],
    *,
    poll_s: float = 0.5,
    timeout_s: float = 24 * 3600,
    stale_after_s: float = 6 * 3600,
) -> None:
    """Block while another live driver still runs units of these (earlier) stages.

    Two ``darkroom run`` processes on one repository share the work unit by unit;
    neither may plan a stage before the stages it depends on are finished, or it
    would find masters missing that the other is still making.
    """
    if not stage_names:
        return
    me = worker_id()
    deadline = time.monotonic() + timeout_s
    while True:
        with registry.session() as s:
            running = s.scalars(
                select(Task).where(Task.stage.in_(stage_names), Task.state == "running")
            ).all()
            busy = [
                t for t in running if t.worker != me and not _claim_is_stale(t, stale_after_s=stale_after_s)
            ]
        if not busy or time.monotonic() > deadline:
            return
        time.sleep(poll_s)


def record_provenance(registry: Registry, stage: Stage) -> None:
    """Record the stage's provenance row (once, whichever driver gets there first)."""
    try:
        with registry.session() as s:
            stage.ensure_provenance(s)
    except IntegrityError:  # another driver recorded the same provenance at the same moment
        pass


def _record_one(
    registry: Registry,
    stage: Stage,
    unit: Unit,
    result: Any,
    error: BaseException | None,
    report: StageReport,
) -> None:
    """Record one finished unit: its result and task 'done', or the task 'failed' with the reason."""
    if error is None:
        try:
            with registry.session() as s:
                task = _task(s, stage, unit)
                if task.state == "done":  # recorded by another process meanwhile
                    return
                stage.record(s, unit, result)
                task.state, task.reason, task.finished_utc = "done", None, utcnow()
            report.n_done += 1
            return
        except Exception as exc:  # recording failed: the unit failed, the run goes on
            error = exc
    reason = one_line(error)
    log.warning("%s %s failed: %s", stage.name, unit.key, reason)
    if not isinstance(error, DarkroomError):
        log.info("".join(traceback.format_exception(error)))
    with registry.session() as s:
        task = _task(s, stage, unit)
        task.state, task.reason, task.finished_utc = "failed", reason, utcnow()
        if isinstance(error, DarkroomError) and error.quarantine:
            stage.quarantine(s, unit, reason)
    report.n_failed += 1
    report.failures.append((unit.key, reason))


def _record_done(registry: Registry, stage: Stage, done: list[tuple[Unit, Any]], report: StageReport) -> None:
    """Record finished units in one transaction (in their order); when one unit's recording
    fails, each is recorded on its own (:func:`_record_one`), so that only that unit fails."""
    if len(done) == 1:
        _record_one(registry, stage, done[0][0], done[0][1], None, report)
        return
    try:
        with registry.session() as s:
            tasks = {
                t.key: t
                for t in s.scalars(
                    select(Task).where(
                        Task.stage == stage.name,
                        Task.provenance_id == stage.provenance_id,
                        Task.key.in_([u.key for u, _ in done]),
                    )
                )
            }
            n_done = 0
            for unit, result in done:
                task = tasks.get(unit.key)
                if task is None:
                    task = _task(s, stage, unit)
                if task.state == "done":  # recorded by another process meanwhile
                    continue
                stage.record(s, unit, result)
                task.state, task.reason, task.finished_utc = "done", None, utcnow()
                n_done += 1
        report.n_done += n_done
    except Exception:  # one unit's rows failed: the transaction is undone, each unit alone
        log.debug("recording %d units at once failed; one at a time", len(done), exc_info=True)
        for unit, result in done:
            _record_one(registry, stage, unit, result, None, report)


def _workers_pay_off(stage: Stage, units: Sequence[Unit]) -> bool:
    """Whether a stage's units are worth shipping to workers rather than run in the driver.

    Not for one unit, or a few light ones (``Stage.min_units_for_workers``); nor when one unit
    holds all but :data:`WORKERS_MIN_SHARE` of the work (``Stage.unit_weight``): workers could
    shorten the stage by less than that, and shipping the units and their results costs more.
    On the ARCSAT night, a field of 80 frames and one of a single frame: astrometry 1.17 s and
    association 0.24-0.36 s on 2 workers, about 1.0 s and 0.13 s in the driver.
    """
    if len(units) < max(stage.min_units_for_workers, 2):
        return False
    weights = [stage.unit_weight(u) for u in units]
    total = sum(weights)
    return total - max(weights) >= WORKERS_MIN_SHARE * total


def run_stage(
    registry: Registry,
    stage: Stage,
    executor: Executor | None = None,
    *,
    retry_failed: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> StageReport:
    """Plan, run and record one stage. Units that failed before are retried only with ``retry_failed``."""
    t0 = time.perf_counter()
    if stage.executor == "thread":
        executor = ThreadExecutor(stage.max_in_flight)
    executor = executor or SerialExecutor()
    report = StageReport(stage=stage.name, provenance_id=stage.provenance_id)
    record_provenance(registry, stage)
    with registry.session() as s:
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
    n_total = len(units)
    if executor.name not in ("serial", "thread") and not _workers_pay_off(stage, units):
        executor = SerialExecutor()
    if progress:
        progress(0, n_total)

    order: list[str] = []

    def claimed() -> Iterator[Unit]:
        # Claim a few units just before they are handed out, so two drivers on one
        # repository share a stage a few units at a time instead of the first taking all.
        for i in range(0, len(units), CLAIM_BATCH):
            for unit in claim_units(registry, stage, units[i : i + CLAIM_BATCH]):
                report.n_planned += 1
                order.append(unit.key)
                yield unit

    # Results are recorded in the order the units were handed out, whatever order
    # they finish in, so registry ids (and products that name them) are the same
    # for a serial run, a Dask run and a resumed run.
    finished: dict[str, tuple[Unit, Any, BaseException | None]] = {}
    n_recorded = 0
    # In the driver's own process a stage may leave a unit's file being written when run()
    # returns; that unit is recorded (after settle: its file durable) once the next unit has
    # run, so the write overlaps the next computation. A row still never exists without its
    # file: a kill before the record leaves a file and a 'running' task, redone next time.
    defer = stage.defers_writes and executor.name == "serial"
    if defer:
        stage.begin_deferred_writes()

    # Finished units are recorded a few at a time, in order, in one transaction (a kill loses
    # at most those few records: their units run again, to the same products).
    done: list[tuple[Unit, Any]] = []
    first_done_at = 0.0

    def flush() -> None:
        if done:
            _record_done(registry, stage, done, report)
            done.clear()

    def record(key: str) -> None:
        nonlocal first_done_at
        unit, result, error = finished.pop(key)
        if error is None and defer:  # a worker's results come settled
            result, error = settled(stage, result)
        if error is not None:  # a failure is recorded at once, after the units before it
            flush()
            _record_one(registry, stage, unit, result, error, report)
            return
        if not done:
            first_done_at = time.monotonic()
        done.append((unit, result))
        if len(done) >= RECORD_BATCH or time.monotonic() - first_done_at > RECORD_WAIT_S:
            flush()

    try:
        for n_finished, (unit, result, error) in enumerate(executor.map_units(stage.run, claimed()), start=1):
            finished[unit.key] = (unit, result, error)
            # the newest unit handed out waits while its file is written (deferred writes)
            ready = len(order) - 1 if defer else len(order)
            while n_recorded < ready and order[n_recorded] in finished:
                record(order[n_recorded])
                n_recorded += 1
            if progress:
                progress(n_finished, n_total)
        while n_recorded < len(order) and order[n_recorded] in finished:
            record(order[n_recorded])
            n_recorded += 1
        flush()
    finally:
        if done:  # interrupted (Ctrl-C): what finished is still recorded
            with contextlib.suppress(Exception):
                flush()
        if defer:
            stage.end_deferred_writes()
    report.seconds = time.perf_counter() - t0
    return report
