"""``--workers N``: units in batches on local worker processes (pipeline.local_workers), with the
same rows and files as a serial run, and a killed worker costing only the units it was running.
(A batch's writes overlapping the next batch's computing: tests/test_runner.py, on both Dask and
these workers.)"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import ClassVar

import pytest
import sqlalchemy as sa
from pydantic import BaseModel, Field

from darkroom.errors import BadInputError
from darkroom.pipeline.local_workers import LocalWorkersExecutor
from darkroom.pipeline.runner import run_stage
from darkroom.pipeline.stage import Stage, Unit, quarantine_exposure
from darkroom.repo.models import Exposure, Task
from darkroom.repo.registry import Registry
from darkroom.repo.store import atomic_write_text


class Settings(BaseModel):
    factor: int = Field(3, json_schema_extra={"critical": True})


class Frames(Stage):
    """One unit per exposure: writes value * factor; with ``faulty``, exposure 3 is bad input and
    4 raises a bug."""

    name = "toy_frames"
    faulty: ClassVar[bool] = True

    def plan(self, session):
        return [
            Unit(key=f"exp:{e.id}", payload={"value": e.id, "exposure_id": e.id})
            for e in session.scalars(sa.select(Exposure).where(Exposure.state == "ok").order_by(Exposure.id))
        ]

    def run(self, unit):
        value = unit.payload["value"]
        if self.faulty and value == 3:
            raise BadInputError("frame is all zeros")
        if self.faulty and value == 4:
            raise ZeroDivisionError("division by zero\nin line 2")
        path = self.product_path("products", self.provenance_id, f"{unit.key}.txt")
        atomic_write_text(path, str(value * self.config.factor))
        return {"path": self.relative(path), "pid": os.getpid()}

    def record(self, session, unit, result):
        self.__dict__.setdefault("pids", set()).add(result["pid"])
        exp = session.get(Exposure, unit.payload["exposure_id"])
        exp.meta = {**exp.meta, "toy": result["path"]}

    def quarantine(self, session, unit, reason):
        quarantine_exposure(session, unit.payload["exposure_id"], f"{self.name}: {reason}")


def _registry(path, n: int = 8) -> Registry:
    reg = Registry(f"sqlite:///{path}")
    reg.upgrade()
    with reg.session() as s:
        s.add_all(
            [
                Exposure(sha256=f"{i:064d}", path=f"/r/{i}", size_bytes=1, state="ok", meta={})
                for i in range(1, n + 1)
            ]
        )
    return reg


def _on_workers(reg: Registry, stage: Stage, n_workers: int, batch_size: int):
    """(report, executor): ``stage`` run on ``n_workers`` local workers, which are closed after."""
    executor = LocalWorkersExecutor(n_workers, batch_size=batch_size)
    try:
        return run_stage(reg, stage, executor), executor
    finally:
        executor.close()


def _tasks(reg: Registry) -> list[tuple]:
    with reg.session() as s:
        return s.execute(sa.select(Task.key, Task.state, Task.reason).order_by(Task.key)).all()


def test_two_local_workers_write_what_a_serial_run_writes(tmp_path):
    serial, parallel = _registry(tmp_path / "s.db"), _registry(tmp_path / "p.db")
    run_stage(serial, Frames(tmp_path / "serial", Settings()))
    stage = Frames(tmp_path / "parallel", Settings())
    executor = LocalWorkersExecutor(2, batch_size=2)
    try:
        executor.start()  # in the background; the first stage waits for it
        report = run_stage(parallel, stage, executor)
    finally:
        executor.close()
    assert (report.n_done, report.n_failed) == (6, 2)
    assert sorted(report.failures) == [
        ("exp:3", "frame is all zeros"),
        ("exp:4", "ZeroDivisionError: division by zero in line 2"),
    ]
    assert len(stage.pids) == 2 and os.getpid() not in stage.pids  # both workers ran units
    files = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*.txt"))
    assert len(files) == 6
    assert [(tmp_path / "parallel" / f).read_bytes() for f in files] == [
        (tmp_path / "serial" / f).read_bytes() for f in files
    ]
    assert _tasks(serial) == _tasks(parallel)
    with serial.session() as a, parallel.session() as b:
        q = sa.select(Exposure.id, Exposure.state, Exposure.reason, Exposure.meta).order_by(Exposure.id)
        assert a.execute(q).all() == b.execute(q).all()  # exposure 3 quarantined in both
    assert executor.worker_pids() == []  # closed: the workers have exited
    serial.dispose()
    parallel.dispose()


class KillsItsWorker(Frames):
    """Exposure 5's unit kills the process it runs in (as the kernel's OOM killer would)."""

    name = "toy_kills"
    faulty = False

    def run(self, unit):
        if unit.payload["value"] == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().run(unit)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_killed_worker_fails_the_units_of_its_batch_and_the_run_goes_on(tmp_path, batch_size):
    reg = _registry(tmp_path / "k.db", n=12)
    executor = LocalWorkersExecutor(2, batch_size=batch_size)
    try:
        report = run_stage(reg, KillsItsWorker(tmp_path, Settings()), executor)
        # the replacement worker runs later stages too
        again = run_stage(reg, Frames(tmp_path, Settings(factor=7)), executor)
    finally:
        executor.close()
    reason = "WorkerDiedError: the worker process running this unit ended (killed by signal 9)"
    failed = dict(report.failures)
    # exposure 5 fails, with the batch it was in (units computed there were lost with the worker)
    batch_of_5 = {f"exp:{i}" for i in range(1, 13) if (i - 1) // batch_size == (5 - 1) // batch_size}
    assert set(failed) == batch_of_5 and set(failed.values()) == {reason}
    assert report.n_done == 12 - len(batch_of_5) and executor.n_restarted == 1
    assert (again.n_done, again.n_failed) == (10, 2)
    states = {key: state for key, state, _ in _tasks(reg) if key.startswith("exp:")}
    assert "running" not in states.values()
    reg.dispose()


class OddError(Exception):
    """Pickles, but does not rebuild from its pickle (its one argument is keyword-only)."""

    def __init__(self, *, code: int) -> None:
        super().__init__(f"odd code {code}")


class Unpicklable(Frames):
    """Exposure 2's result holds a lock, which cannot travel between processes; exposure 6 raises
    an error that cannot be rebuilt in the driver."""

    name = "toy_unpicklable"
    faulty = False

    def run(self, unit):
        if unit.payload["value"] == 6:
            raise OddError(code=6)
        result = super().run(unit)
        if unit.payload["value"] == 2:
            result["lock"] = threading.Lock()
        return result

    def record(self, session, unit, result):
        self.__dict__.setdefault("done", []).append(unit.key)


def test_a_result_that_cannot_be_shipped_fails_its_unit_only(tmp_path):
    reg = _registry(tmp_path / "u.db", n=6)
    stage = Unpicklable(tmp_path, Settings())
    report, executor = _on_workers(reg, stage, 1, 3)
    failures = dict(report.failures)
    assert sorted(failures) == ["exp:2", "exp:6"] and executor.n_restarted == 0
    assert failures["exp:2"].startswith("RuntimeError: its result could not be sent to the driver: TypeError")
    assert failures["exp:6"] == "RuntimeError: OddError: odd code 6"  # its text, in the driver's class
    assert stage.done == ["exp:1", "exp:3", "exp:4", "exp:5"]
    reg.dispose()


class WhereAmI(Frames):
    name = "toy_where"

    def run(self, unit):
        kernels = [
            m for name, m in sys.modules.items() if name.startswith("darkroom") and name.endswith("_kernels")
        ]
        compiled = all(any(getattr(v, "overloads", None) for v in vars(m).values()) for m in kernels)
        return {
            "parent": os.getppid(),
            "stages_loaded": "darkroom.detect.extract" in sys.modules,
            "kernel_modules": len(kernels),
            "compiled": compiled,
        }

    def record(self, session, unit, result):
        self.__dict__.setdefault("results", []).append(result)


def test_local_workers_fork_from_a_server_with_the_stages_and_their_kernels_loaded(tmp_path):
    """The workers are forked from one fork server (started early, as `darkroom run --workers` does),
    not spawned by the driver, and start with the per-frame stages' libraries and every compiled
    kernel loaded."""
    import multiprocessing.forkserver as fs

    from darkroom.pipeline.executors import prepare_local_workers

    assert prepare_local_workers()
    server = fs._forkserver._forkserver_pid
    reg = _registry(tmp_path / "w.db", n=4)
    stage = WhereAmI(tmp_path, Settings())
    _on_workers(reg, stage, 2, 1)
    assert {r["parent"] for r in stage.results} == {server} and server != os.getpid()
    assert all(r["stages_loaded"] and r["compiled"] and r["kernel_modules"] == 6 for r in stage.results)
    reg.dispose()


def _explode():
    raise ValueError("cannot be rebuilt here")


class BrokenOnArrival:
    """Pickles in the driver, fails to unpickle anywhere (as a class a worker cannot import)."""

    def __reduce__(self):
        return (_explode, ())


class CarriesBroken(Frames):
    name = "toy_broken_payload"
    faulty = False

    def plan(self, session):
        units = super().plan(session)
        return [
            Unit(u.key, {**u.payload, "odd": BrokenOnArrival()}) if u.key == "exp:5" else u for u in units
        ]


def test_a_batch_a_worker_cannot_read_fails_with_the_reason_and_the_worker_goes_on(tmp_path):
    reg = _registry(tmp_path / "b.db", n=8)
    stage = CarriesBroken(tmp_path, Settings())
    report, executor = _on_workers(reg, stage, 1, 2)
    reason = "RuntimeError: the worker could not read the units: ValueError: cannot be rebuilt here"
    assert sorted(report.failures) == [("exp:5", reason), ("exp:6", reason)]  # the batch of exp:5
    assert report.n_done == 6 and executor.n_restarted == 0
    reg.dispose()


def test_workers_end_when_their_driver_is_killed(tmp_path):
    """A driver killed with SIGKILL (kill -9, the OOM killer) leaves no worker behind: each worker
    finishes the batch it holds and exits when its pipe closes."""
    import subprocess
    import textwrap
    import time

    import psutil

    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from pydantic import BaseModel
            from darkroom.pipeline.local_workers import LocalWorkersExecutor
            from darkroom.pipeline.stage import Unit

            def slow(unit):
                time.sleep(0.2)
                return unit.key

            if __name__ == "__main__":
                executor = LocalWorkersExecutor(2, batch_size=1)
                units = [Unit(key=str(i)) for i in range(1000)]
                for n, _ in enumerate(executor.map_units(slow, units)):
                    if n == 2:
                        print(*executor.worker_pids(), flush=True)
            """
        )
    )
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in driver.stdout.readline().split()]
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    finally:
        driver.kill()
        driver.wait(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
