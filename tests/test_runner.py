"""The runner: units planned, run, recorded; failures isolated with one-line reasons."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa
from pydantic import BaseModel, Field

from darkroom.errors import BadInputError
from darkroom.pipeline.runner import run_stage
from darkroom.pipeline.stage import Stage, Unit, quarantine_exposure
from darkroom.repo.models import Exposure, Task
from darkroom.repo.registry import Registry
from darkroom.repo.store import atomic_write_text


class ToyConfig(BaseModel):
    factor: int = Field(2, json_schema_extra={"critical": True})


class ToyStage(Stage):
    """Writes value*factor to a file per exposure; exposure 3 is bad input, 4 raises a bug."""

    name = "toy"

    def plan(self, session):
        done = set(
            session.scalars(
                sa.select(Task.key).where(
                    Task.stage == self.name, Task.provenance_id == self.provenance_id, Task.state == "done"
                )
            )
        )
        units = []
        for e in session.scalars(sa.select(Exposure).where(Exposure.state == "ok").order_by(Exposure.id)):
            key = f"exp:{e.id}"
            if key not in done:
                units.append(Unit(key=key, payload={"value": e.id, "exposure_id": e.id}))
        return units

    def run(self, unit):
        if unit.payload["value"] == 3:
            raise BadInputError("frame is all zeros")
        if unit.payload["value"] == 4:
            raise ZeroDivisionError("division by zero\nin line 2")
        path = self.product_path("products", self.provenance_id, f"{unit.key}.txt")
        atomic_write_text(path, str(unit.payload["value"] * self.config.factor))
        return self.relative(path)

    def record(self, session, unit, result):
        exp = session.get(Exposure, unit.payload["exposure_id"])
        exp.meta = {**exp.meta, "toy": result}

    def quarantine(self, session, unit, reason):
        quarantine_exposure(session, unit.payload["exposure_id"], f"{self.name}: {reason}")


@pytest.fixture
def registry(db_url):
    reg = Registry(db_url)
    reg.upgrade()
    with reg.session() as s:
        s.add_all(
            [
                Exposure(sha256=f"{i:064d}", path=f"/r/{i}", size_bytes=1, state="ok", meta={})
                for i in range(1, 6)
            ]
        )
    yield reg
    reg.dispose()


def test_failures_are_isolated_and_reported(registry, tmp_path):
    stage = ToyStage(tmp_path, ToyConfig())
    report = run_stage(registry, stage)
    assert (report.n_planned, report.n_done, report.n_failed) == (5, 3, 2)
    reasons = dict(report.failures)
    assert reasons["exp:3"] == "frame is all zeros"
    assert reasons["exp:4"] == "ZeroDivisionError: division by zero in line 2"
    with registry.session() as s:
        states = dict(s.execute(sa.select(Task.key, Task.state)).all())
        assert states == {
            "exp:1": "done",
            "exp:2": "done",
            "exp:3": "failed",
            "exp:4": "failed",
            "exp:5": "done",
        }
        bad = s.get(Exposure, 3)
        assert bad.state == "quarantined" and bad.reason == "toy: frame is all zeros"
        assert s.get(Exposure, 4).state == "ok"  # a bug is not the input's fault
    assert (tmp_path / "products" / stage.provenance_id / "exp:5.txt").read_text() == "10"


class RecordFailsStage(ToyStage):
    """Every unit runs; recording exposure 2 fails (its row breaks a constraint, say)."""

    name = "toy_record_fails"

    def run(self, unit):
        return f"value {unit.payload['value']}"

    def record(self, session, unit, result):
        if unit.payload["value"] == 2:
            raise ValueError("row rejected")
        super().record(session, unit, result)


def test_units_recorded_together_and_a_failed_record_fails_its_unit_only(registry, tmp_path, monkeypatch):
    import darkroom.pipeline.runner as runner_mod

    transactions = []
    real = runner_mod._record_done
    monkeypatch.setattr(
        runner_mod,
        "_record_done",
        lambda reg, st, done, rep: (transactions.append(len(done)), real(reg, st, done, rep)),
    )
    stage = RecordFailsStage(tmp_path, ToyConfig())
    report = run_stage(registry, stage)
    assert transactions == [5]  # five finished units, one transaction
    assert (report.n_done, report.n_failed) == (4, 1)
    assert dict(report.failures)["exp:2"] == "ValueError: row rejected"
    with registry.session() as s:
        states = dict(s.execute(sa.select(Task.key, Task.state)).all())
        toys = {e.id: e.meta.get("toy") for e in s.scalars(sa.select(Exposure))}
    assert states == {f"exp:{i}": ("failed" if i == 2 else "done") for i in range(1, 6)}
    assert toys == {1: "value 1", 2: None, 3: "value 3", 4: "value 4", 5: "value 5"}


def test_rerun_skips_done_and_failed_unless_asked(registry, tmp_path):
    stage = ToyStage(tmp_path, ToyConfig())
    run_stage(registry, stage)
    again = run_stage(registry, stage)
    assert again.n_planned == 0
    retry = run_stage(registry, stage, retry_failed=True)
    assert retry.n_planned == 1  # exp:4 (exp:3 is quarantined now)
    with registry.session() as s:
        assert s.scalar(sa.select(Task.attempts).where(Task.key == "exp:4")) == 2


def test_critical_parameter_makes_new_products_beside_old(registry, tmp_path):
    a = ToyStage(tmp_path, ToyConfig(factor=2))
    b = ToyStage(tmp_path, ToyConfig(factor=3))
    assert a.provenance_id != b.provenance_id
    run_stage(registry, a)
    report = run_stage(registry, b)
    assert (report.n_planned, report.n_done) == (
        4,
        3,
    )  # exp:3 quarantined by the first run, exp:4 fails again
    assert (tmp_path / "products" / a.provenance_id / "exp:1.txt").read_text() == "2"
    assert (tmp_path / "products" / b.provenance_id / "exp:1.txt").read_text() == "3"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def _workers_for(kind: str):
    """An executor with two workers and a test of whether they were started: a local Dask
    cluster, or the local worker processes `--workers 2` runs on."""
    from darkroom.pipeline.executors import DaskExecutor
    from darkroom.pipeline.local_workers import LocalWorkersExecutor

    if kind == "dask":
        executor = DaskExecutor(n_workers=2)
        return executor, lambda: executor.cluster is not None
    executor = LocalWorkersExecutor(2)
    return executor, lambda: bool(executor.worker_pids())


@pytest.mark.parametrize("kind", ["dask", "processes"])
def test_workers_start_only_for_a_stage_with_units_to_share(registry, tmp_path, db_url, kind):
    executor, started = _workers_for(kind)
    try:
        stage = ToyStage(tmp_path, ToyConfig(factor=5))
        with registry.session() as s:  # all but one exposure already done: one unit is left
            for e in s.scalars(sa.select(Exposure).where(Exposure.id != 2)):
                e.state = "quarantined"
        report = run_stage(registry, stage, executor)
        assert (report.n_done, report.n_failed) == (1, 0)
        assert not started()  # the unit ran in the driver; no worker was started
        assert run_stage(registry, stage, executor).n_planned == 0 and not started()
    finally:
        executor.close()


class LightToyStage(ToyStage):
    """A stage whose units are few and light: under 10 of them stay in the driver."""

    name = "toy_light"
    min_units_for_workers = 10


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("kind", ["dask", "processes"])
def test_a_few_light_units_run_in_the_driver_even_with_workers(registry, tmp_path, db_url, kind):
    executor, started = _workers_for(kind)
    try:
        report = run_stage(registry, LightToyStage(tmp_path, ToyConfig(factor=5)), executor)
        assert (report.n_planned, report.n_done, report.n_failed) == (5, 3, 2)  # 3 bad, 4 a bug
        assert not started()  # five units < 10: none was shipped, no worker started
    finally:
        executor.close()


class FieldToyStage(ToyStage):
    """A stage whose units are fields: each unit's weight is its frames."""

    name = "toy_fields"


@pytest.mark.parametrize(
    ("frames", "shipped"),
    [
        ([80, 1], False),  # the ARCSAT night: the transit field and one standard-star frame
        ([30, 9], False),  # 9 of 39 frames outside the largest field: under a quarter
        ([30, 10], True),  # 10 of 40: a quarter
        ([40, 40], True),
        ([1, 1, 1], True),  # per-frame units
        ([96], False),  # one unit
    ],
)
def test_workers_are_used_only_where_they_can_shorten_a_stage(frames, shipped):
    from darkroom.pipeline.runner import _workers_pay_off

    units = [Unit(key=f"field:{i}", payload={"frames": [{}] * n}) for i, n in enumerate(frames)]
    assert [FieldToyStage.unit_weight(u) for u in units] == frames
    assert _workers_pay_off(FieldToyStage, units) is shipped
    # units with no frames weigh one each: a few light ones still stay in the driver
    plain = [Unit(key=f"exp:{i}") for i in range(5)]
    assert _workers_pay_off(ToyStage, plain) and not _workers_pay_off(LightToyStage, plain)


def test_frames_to_calibrate_counts_light_frames_without_an_image(registry):
    from types import SimpleNamespace

    from darkroom.pipeline.drive import frames_to_calibrate

    calibrate = SimpleNamespace(name="calibrate", provenance_id="p" * 16)
    extract = SimpleNamespace(name="extract", provenance_id="q" * 16)
    assert frames_to_calibrate(registry, [calibrate]) == 0  # no light frames
    with registry.session() as s:
        for e in s.scalars(sa.select(Exposure).where(Exposure.id <= 3)):
            e.frame_type = "light"
    assert frames_to_calibrate(registry, [calibrate, extract]) == 3
    assert frames_to_calibrate(registry, [extract]) == 0  # calibrate is not among the stages run


def _compiled_kernels_loaded() -> bool:
    """(On a worker) whether every stage's kernels are compiled in this process."""
    import sys

    kernels = {
        "darkroom.calib._cosmics_kernels": "candidates_full",
        "darkroom.calib._process_kernels": "remove_signature",
        "darkroom.detect._psf_kernels": "_step",
        "darkroom.phot._aperture_kernels": "annulus_values",
    }
    modules = {name: sys.modules.get(name) for name in kernels}
    return all(m is not None and getattr(m, kernels[n]).overloads for n, m in modules.items())


@pytest.mark.parametrize("early", [False, True], ids=["on-first-use", "started-early"])
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_dask_local_cluster_matches_serial(registry, tmp_path, db_url, early):
    import sys

    import cloudpickle

    from darkroom.pipeline.executors import DaskExecutor

    # Workers cannot import the test module; ship the toy stage by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    serial_root, dask_root = tmp_path / "serial", tmp_path / "dask"
    run_stage(registry, ToyStage(serial_root, ToyConfig(factor=5)))
    other = Registry(f"sqlite:///{tmp_path / 'dask.db'}")
    other.upgrade()
    with other.session() as s:
        s.add_all(
            [
                Exposure(sha256=f"{i:064d}", path=f"/r/{i}", size_bytes=1, state="ok", meta={})
                for i in range(1, 6)
            ]
        )
    # batches of two: exp:3 (quarantined) and exp:4 (a bug) fail inside one batch, alone
    executor = DaskExecutor(n_workers=2, batch_size=2)
    try:
        if early:  # started in the background, the stages' libraries loaded on the workers
            executor.start()
            loaded = executor.client.run(lambda: "darkroom.detect.extract" in sys.modules)
            assert list(loaded.values()) == [True, True]
            # and the compiled kernels, loaded once by the fork server the workers came from
            ready = executor.client.run(_compiled_kernels_loaded)
            assert list(ready.values()) == [True, True]
        assert len(executor.client.scheduler_info()["workers"]) == 2
        report = run_stage(other, ToyStage(dask_root, ToyConfig(factor=5)), executor)
    finally:
        executor.close()
    assert (report.n_done, report.n_failed) == (3, 2)
    assert sorted(report.failures) == [
        ("exp:3", "frame is all zeros"),
        ("exp:4", "ZeroDivisionError: division by zero in line 2"),
    ]
    serial_files = sorted(p.relative_to(serial_root) for p in serial_root.rglob("*.txt"))
    dask_files = sorted(p.relative_to(dask_root) for p in dask_root.rglob("*.txt"))
    assert serial_files == dask_files and len(dask_files) == 3
    for rel in dask_files:
        assert (serial_root / rel).read_bytes() == (dask_root / rel).read_bytes()
    with registry.session() as a, other.session() as b:
        q = sa.select(Task.key, Task.state, Task.reason).order_by(Task.key)
        assert a.execute(q).all() == b.execute(q).all()
    other.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_claims_are_exclusive_between_drivers(registry, tmp_path):
    import darkroom.pipeline.runner as runner_mod

    stage = ToyStage(tmp_path, ToyConfig())
    units = [Unit(key=f"exp:{i}", payload={"value": i, "exposure_id": i}) for i in (1, 2)]
    first = runner_mod.claim_units(registry, stage, units)
    assert [u.key for u in first] == ["exp:1", "exp:2"]
    # Hand the claims to another live driver (this test's parent process stands in for it).
    with registry.session() as s:
        for t in s.scalars(sa.select(Task)):
            t.worker = f"{runner_mod.socket.gethostname()}:{os.getppid()}"
    assert runner_mod.claim_units(registry, stage, units) == []
    # A claim by a driver that is gone is stale and can be taken over.
    with registry.session() as s:
        for t in s.scalars(sa.select(Task)):
            t.worker = f"{runner_mod.socket.gethostname()}:999999"
    assert [u.key for u in runner_mod.claim_units(registry, stage, units)] == ["exp:1", "exp:2"]


class DeferringStage(ToyStage):
    """Writes in a thread and returns before the file is written (deferred writes); the write
    of exposure 2 fails (a full disk). Records which files existed when each unit was recorded."""

    name = "toy_deferring"
    defers_writes = True

    def begin_deferred_writes(self):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1)
        self.seen_at_record: dict[str, bool] = {}
        self.ran_at_record: dict[str, int] = {}
        self.ran: list[str] = []

    def end_deferred_writes(self):
        self.pool.shutdown(wait=True)

    def run(self, unit):
        import time

        self.ran.append(unit.key)
        path = self.product_path("products", self.provenance_id, f"{unit.key}.txt")

        def write():
            time.sleep(0.05)
            if unit.payload["value"] == 2:
                raise OSError("No space left on device")
            atomic_write_text(path, str(unit.payload["value"]))
            return self.relative(path)

        return {"key": unit.key, "path": self.pool.submit(write)}

    def settle(self, result):
        return {**result, "path": result["path"].result()}

    def record(self, session, unit, result):
        self.seen_at_record[unit.key] = (self.root / result["path"]).is_file()
        self.ran_at_record[unit.key] = len(self.ran)
        super().record(session, unit, result["path"])


def test_deferred_writes_record_a_unit_after_its_file_and_a_failed_write_fails_it(registry, tmp_path):
    stage = DeferringStage(tmp_path, ToyConfig())
    report = run_stage(registry, stage)
    assert (report.n_planned, report.n_done, report.n_failed) == (5, 4, 1)
    assert dict(report.failures)["exp:2"] == "OSError: No space left on device"
    assert all(stage.seen_at_record[f"exp:{i}"] for i in (1, 3, 4, 5))  # files there before their rows
    # each unit recorded only after the next one ran (its write overlapped that run); records
    # are made a few at a time, so some later still
    assert all(stage.ran_at_record[f"exp:{i}"] >= i + 1 for i in (1, 3, 4))
    assert stage.ran_at_record["exp:5"] == 5
    with registry.session() as s:
        states = dict(s.execute(sa.select(Task.key, Task.state).where(Task.stage == "toy_deferring")).all())
    assert states == {"exp:1": "done", "exp:2": "failed", "exp:3": "done", "exp:4": "done", "exp:5": "done"}


class SettledAtRecord(DeferringStage):
    """The deferring stage as a Dask worker runs it: each record says whether its file existed."""

    name = "toy_deferring_dask"

    def record(self, session, unit, result):
        assert isinstance(result["path"], str)  # settled on the worker: no Future crosses over
        self.__dict__.setdefault("seen_at_record", {})[unit.key] = (self.root / result["path"]).is_file()
        ToyStage.record(self, session, unit, result["path"])


def test_a_worker_batch_overlaps_and_settles_deferred_writes_before_shipping(registry, tmp_path):
    import sys

    import cloudpickle

    from darkroom.pipeline.executors import DaskExecutor

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    stage = SettledAtRecord(tmp_path, ToyConfig())
    executor = DaskExecutor(n_workers=1, batch_size=5)
    try:
        report = run_stage(registry, stage, executor)
    finally:
        executor.close()
    assert (report.n_planned, report.n_done, report.n_failed) == (5, 4, 1)
    assert dict(report.failures)["exp:2"] == "OSError: No space left on device"
    assert stage.seen_at_record == {f"exp:{i}": True for i in (1, 3, 4, 5)}
    with registry.session() as s:
        states = dict(
            s.execute(sa.select(Task.key, Task.state).where(Task.stage == "toy_deferring_dask")).all()
        )
    assert states == {"exp:1": "done", "exp:2": "failed", "exp:3": "done", "exp:4": "done", "exp:5": "done"}


class HandsOverStage(ToyStage):
    """Defers its writes; the write of exposure 2 (the last of the first batch of two) waits
    until the unit of exposure 3 (the first of the next batch) has run, for a minute at most.
    Its result says whether it saw that run, and which process ran it."""

    name = "toy_hands_over"
    defers_writes = True

    def begin_deferred_writes(self):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1)
        self.writes = []

    def end_deferred_writes(self):
        self.pool.shutdown(wait=True)

    def writes_done(self, timeout=0.0):
        from concurrent.futures import wait

        return not wait(self.writes, timeout=timeout).not_done

    def run(self, unit):
        value = unit.payload["value"]
        path = self.product_path("products", self.provenance_id, f"{unit.key}.txt")
        flag = self.root / "exp3-ran"
        if value == 3:
            atomic_write_text(flag, "")

        def write():
            import time

            deadline = time.monotonic() + 60
            while value == 2 and not flag.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            atomic_write_text(path, str(value))
            return self.relative(path), value != 2 or flag.exists()

        result = {"key": unit.key, "pid": os.getpid()}
        if getattr(self, "pool", None) is None:  # a batch of one unit does not defer
            return self.settle({**result, "write": write()})
        self.writes.append(self.pool.submit(write))
        return {**result, "write": self.writes[-1]}

    def settle(self, result):
        write = result["write"]
        path, saw = write if isinstance(write, tuple) else write.result()
        return {"key": result["key"], "path": path, "saw_next_batch": saw, "pid": result["pid"]}

    def record(self, session, unit, result):
        self.__dict__.setdefault("results", {})[unit.key] = result
        ToyStage.record(self, session, unit, result["path"])


@pytest.mark.parametrize("kind", ["dask", "processes"])
def test_a_worker_computes_its_next_batch_while_a_batch_waits_for_its_writes(registry, tmp_path, kind):
    """On a worker, a batch whose units are computed but whose writes go on hands the worker to
    the next batch (its own results are still settled before they are shipped): on Dask by
    seceding, on the local workers (``--workers N``) by its sender thread."""
    import sys

    import cloudpickle

    from darkroom.pipeline.executors import DaskExecutor
    from darkroom.pipeline.local_workers import LocalWorkersExecutor

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    stage = HandsOverStage(tmp_path, ToyConfig())
    if kind == "dask":
        executor = DaskExecutor(n_workers=1, batch_size=2)
    else:
        executor = LocalWorkersExecutor(1, batch_size=2)
    try:
        report = run_stage(registry, stage, executor)
    finally:
        executor.close()
    assert (report.n_done, report.n_failed) == (5, 0), report.failures
    results = stage.results
    pids = {r["pid"] for r in results.values()}
    assert len(pids) == 1 and os.getpid() not in pids  # all on the one worker
    # exposure 2's write waited for exposure 3, which the one worker ran meanwhile
    assert results["exp:2"]["saw_next_batch"] is True
    assert all((tmp_path / r["path"]).read_text() == key.split(":")[1] for key, r in results.items())


def test_deferred_writes_are_done_when_the_last_one_is(tmp_path):
    """DeferredWrites.writes_done: its one writer thread writes in turn, so the last write
    handed over ending means every one has."""
    import threading

    from darkroom.pipeline.deferred import DeferredWrites

    class Writes(DeferredWrites):
        pass

    w, gate = Writes(), threading.Event()
    assert w.writes_done()  # nothing handed over yet
    w.begin_deferred_writes()
    first = w.write_in_thread(lambda: gate.wait(60) and "a")
    second = w.write_in_thread(lambda: "b")
    assert not w.writes_done(timeout=0.01)
    gate.set()
    assert w.writes_done(timeout=60) and first.result() == "a" and second.result() == "b"
    w.end_deferred_writes()
    assert "_last_write" not in w.__getstate__()  # a Future does not travel to a worker


def test_local_workers_fork_from_a_server_that_loaded_the_stages_libraries():
    """The local cluster's workers are forked from one fork server (not spawned by the driver,
    each importing anew), and they start with the per-frame stages' libraries loaded."""
    import os
    import sys

    from darkroom.pipeline.executors import DaskExecutor

    executor = DaskExecutor(n_workers=2)
    try:
        parents = executor.client.run(os.getppid)
        loaded = executor.client.run(lambda: "darkroom.detect.extract" in sys.modules)
    finally:
        executor.close()
    assert len(parents) == 2 and len(set(parents.values())) == 1
    assert os.getpid() not in parents.values()  # a spawned worker's parent is the driver
    assert list(loaded.values()) == [True, True]


def test_a_fork_server_started_early_is_the_one_the_workers_fork_from():
    """`darkroom run --workers` starts the fork server before anything else (its imports then
    overlap the command's start-up); the local cluster made later forks its workers from it."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import multiprocessing.forkserver as fs, os
        from darkroom.pipeline.executors import DaskExecutor, prepare_local_workers
        if __name__ == "__main__":
            assert prepare_local_workers()
            server = fs._forkserver._forkserver_pid
            assert server and server != os.getpid()
            executor = DaskExecutor(n_workers=1)
            try:
                parents = set(executor.client.run(os.getppid).values())
            finally:
                executor.close()
            print(server, *parents)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    server, *parents = done.stdout.split()
    assert parents == [server]


def test_stages_driven_for_a_one_shot_process_set_the_imports_aside_from_the_collector(registry, tmp_path):
    import gc

    from darkroom.pipeline.drive import drive_stages

    gc.unfreeze()
    try:
        reports = drive_stages(registry, [ToyStage(tmp_path, ToyConfig())], quiet=True)
        assert gc.get_freeze_count() == 0  # by default (a caller's process) nothing is frozen
        assert reports[0].n_done == 3
        drive_stages(
            registry, [ToyStage(tmp_path, ToyConfig(factor=3))], quiet=True, freeze_between_stages=True
        )
        assert gc.get_freeze_count() > 1000  # the objects alive before the stage: set aside
    finally:
        gc.unfreeze()
