"""Executors beyond the serial one: Dask (an existing scheduler, or a LocalCluster), and what
every worker does with a batch of units.

Workers only compute and write product files; results come back to the driver,
which alone records them, so a parallel run and a serial run write the same rows.
``--workers N`` runs N single-threaded local worker processes
(:mod:`darkroom.pipeline.local_workers`; the numerical libraries release the GIL but keep
their own threads busy, so one thread per process avoids oversubscribing the cores);
``--scheduler ADDRESS`` connects to a running Dask cluster whose workers see the repository at
the same path. :class:`DaskExecutor` can also start a local Dask cluster of its own.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import itertools
import logging
import threading
import traceback
import uuid
from collections.abc import Callable

from darkroom.pipeline.runner import Executor, SerialExecutor, settled

__all__ = [
    "DaskExecutor",
    "StartsInBackground",
    "compute_batch",
    "make_executor",
    "prepare_local_workers",
    "set_forkserver_preload",
    "settle_batch",
    "warm_imports",
]

log = logging.getLogger(__name__)


#: how long [s] a worker's batch waits for its last writes before handing the worker to its
#: next batch (see :func:`_free_worker_slot`)
WRITES_GRACE_S = 0.01


def _free_worker_slot() -> None:
    """On a Dask worker, hand this task's thread slot to the worker's next task (Dask's
    ``secede``): a batch that only waits for its files to be written lets the next batch compute
    meanwhile, as a serial run overlaps one unit's write with the next unit's computing.
    Elsewhere (a batch run outside a worker) nothing.

    The next batch then runs on a new thread of the worker's pool, which costs a little (its
    heap, :func:`darkroom._allocator.one_heap`; thread-local buffers), so :func:`_run_batch`
    hands over only a batch whose writes are still going after :data:`WRITES_GRACE_S`: the
    calibrate stage's (three 1k x 1k planes a frame), not extract's (a catalogue). ARCSAT night,
    calibrate on 2 workers: the batches of 4 frames waited 60-90 ms each for their writes, the
    worker idle meanwhile (0.6-0.9 s of each worker's ~5 s); stage 6.23 -> 5.25 s (4 runs each,
    alternated, on a shared machine), the workers' CPU unchanged.
    """
    try:
        from distributed import get_worker, secede
    except ImportError:
        return
    try:
        get_worker()
    except ValueError:  # not in a worker's task
        return
    secede()


def compute_batch(fn, units: list) -> tuple[object, bool, list[tuple[object, BaseException | None]]]:
    """Run ``fn`` on each unit of a batch (on a worker); one unit's error does not stop the others.

    When ``fn`` is the ``run`` of a stage that may defer its writes (``Stage.defers_writes``), a
    unit's file is written while the batch's next unit computes, as in a serial run, and the
    last writes may still be going when this returns: ``(stage, deferring, outcomes)`` goes to
    :func:`settle_batch` before the outcomes are shipped.
    """
    stage = getattr(fn, "__self__", None)
    defer = bool(getattr(stage, "defers_writes", False)) and len(units) > 1
    out: list[tuple[object, BaseException | None]] = []
    if defer:
        stage.begin_deferred_writes()
    try:
        for unit in units:
            try:
                out.append((fn(unit), None))
            except Exception as exc:
                log.debug("unit %s failed:\n%s", unit.key, traceback.format_exc())
                out.append((None, exc))
    except BaseException:
        if defer:
            stage.end_deferred_writes()
        raise
    return stage, defer, out


def settle_batch(
    stage, defer: bool, outcomes: list[tuple[object, BaseException | None]]
) -> list[tuple[object, BaseException | None]]:
    """The outcomes of :func:`compute_batch` with every deferred write done (its file durable,
    its SHA-256 in the result); a failed write fails its unit only. A worker's results must be
    complete when they are shipped."""
    if not defer:
        return outcomes
    try:
        return [settled(stage, result) if error is None else (result, error) for result, error in outcomes]
    finally:
        stage.end_deferred_writes()


def _run_batch(fn, units: list) -> list[tuple[object, BaseException | None]]:
    """A batch of units on a Dask worker: :func:`compute_batch`, then :func:`settle_batch`. When
    the batch's writes are not done soon after its last unit (:data:`WRITES_GRACE_S`), the worker
    computes its next batch while this one waits for them (:func:`_free_worker_slot`)."""
    stage, defer, out = compute_batch(fn, units)
    if defer and not stage.writes_done(timeout=WRITES_GRACE_S):
        _free_worker_slot()
    return settle_batch(stage, defer, out)


#: what the per-frame stages load when their first unit runs on a worker (the stage modules, and
#: the libraries their ``run`` imports): preloaded by the fork server the local workers come
#: from, and imported by every worker as it starts (:func:`warm_imports`: nothing left to do
#: after the fork server's preload), while the driver is busy with the masters, not when the
#: first batch of frames waits for it
_WARM_MODULES = (
    "darkroom.pipeline.stages",
    "darkroom.calib.cosmics",
    "darkroom.calib.starguard",
    "darkroom.detect.extract",
    "darkroom.detect.quality",
    "darkroom.astrom.wcscards",
    "darkroom.phot.aperture",
    "darkroom.phot.frame",
    "darkroom.io.tables",
    "astropy.table",
    "astropy.wcs",
    "pyarrow.parquet",
)


#: what the fork server of the local workers imports before it forks them (:data:`_WARM_MODULES`,
#: then the allocator and compiled kernels, then the collector freeze, in that order)
_FORKSERVER_PRELOAD = (
    *_WARM_MODULES,
    "darkroom.pipeline._prepare_workers",
    "darkroom.pipeline._freeze_on_import",
)


def set_forkserver_preload(*first: str) -> bool:
    """Have the fork server import ``first`` and :data:`_FORKSERVER_PRELOAD` when it starts (a
    server already running keeps its list); False where there is no fork server.

    Workers forked from it find the per-frame stages' libraries imported once, instead of each
    importing them anew. Measured on 2 cores: two spawned workers spent 2.8 s of CPU starting and
    importing, which slowed the masters the driver makes meanwhile (bench_night: masters 1.4 ->
    2.3 s); from a fork server the imports are made once (1.4 s) and each worker forks in ~0.02
    s. The server is a fresh interpreter (not a fork of the driver and its threads), so it is as
    safe as spawning.
    """
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    multiprocessing.get_context("forkserver").set_forkserver_preload([*first, *_FORKSERVER_PRELOAD])
    return True


def _use_forkserver() -> bool:
    """Start a local Dask cluster's workers from the fork server (:func:`set_forkserver_preload`,
    with Dask itself preloaded), unless the user chose how Dask starts worker processes. Only the
    list of modules the server preloads is set here: Dask's own choice of them
    (``distributed.utils.get_mp_context``) imports optional packages into the driver too."""
    if _dask_method_is_set() or not set_forkserver_preload("distributed"):
        return False
    try:
        import distributed.utils as dask_utils

        dask_utils._forkserver_preload_set = True  # keep this list (Dask would set its own)
    except Exception:  # another Dask: its own preload list applies, the warm imports still run
        log.debug("fork server preload not set", exc_info=True)
    return True


def prepare_local_workers() -> bool:
    """Start the fork server of the local workers (``--workers N``) now, in the background; True
    when started.

    Its preload (:data:`_FORKSERVER_PRELOAD`, ~1 s of CPU) then runs on the other core while the
    command is still importing, opening the repository and reading the new files, instead of
    beside the masters; when the workers start (:meth:`LocalWorkersExecutor.start
    <darkroom.pipeline.local_workers.LocalWorkersExecutor.start>`) they fork from the server at
    once. A run that turns out to need no workers loses nothing but that CPU: the server exits
    with the command. Not for a scheduler of the user's.
    """
    if not set_forkserver_preload():
        return False
    try:
        import multiprocessing.forkserver

        multiprocessing.forkserver.ensure_running()  # spawns the server and returns
    except Exception:  # the workers start it when they need it, as before
        log.debug("fork server not started early", exc_info=True)
        return False
    return True


def _dask_method_is_set() -> bool:
    """The user chose how Dask starts worker processes (DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD
    or a Dask configuration file): that choice is kept."""
    import dask

    return dask.config.get("distributed.worker.multiprocessing-method", "spawn") != "spawn"


def warm_imports() -> int:
    """Import :data:`_WARM_MODULES` (on a worker); the number imported. Best effort: a module
    that fails to import here fails again, with its reason, in the unit that needs it."""
    n = 0
    for name in _WARM_MODULES:
        try:
            importlib.import_module(name)
            n += 1
        except Exception:
            log.debug("warm import of %s failed", name, exc_info=True)
    # a worker lives as long as its cluster: what the imports made is set aside from the garbage
    # collector, whose full collections would walk it again and again (as `darkroom run` does)
    gc.freeze()
    return n


class StartsInBackground:
    """An executor whose workers start in a thread while the driver goes on (the masters run in
    it meanwhile); the first use waits for them, and raises what starting them raised."""

    _starting: threading.Thread | None = None
    _start_error: BaseException | None = None

    def _start_in_thread(self, start: Callable[[], None], name: str) -> None:
        def run() -> None:
            try:
                start()
            except BaseException as exc:
                self._start_error = exc

        self._starting = threading.Thread(target=run, name=name, daemon=True)
        self._starting.start()

    def _wait_for_start(self) -> None:
        if self._starting is not None:
            self._starting.join()
            self._starting = None
            error, self._start_error = self._start_error, None
            if error is not None:
                raise error


class DaskExecutor(StartsInBackground, Executor):
    """Runs units as Dask futures and yields them as they complete."""

    name = "dask"

    def __init__(
        self,
        *,
        n_workers: int | None = None,
        scheduler: str | None = None,
        memory_limit: str = "auto",
        batch_size: int = 4,
    ):
        self.batch_size = max(int(batch_size), 1)
        self.n_workers = n_workers or 2
        self.memory_limit = memory_limit
        self.cluster = None
        self._client = None
        if scheduler:  # a cluster of the user's: connect now, so a wrong address fails at once
            from distributed import Client

            self._client = Client(scheduler)
            log.info("dask executor on %s", self._client.scheduler.address)

    def start(self) -> None:
        """Start the local cluster now, in a background thread, and load the stages' libraries
        on its workers: the driver goes on meanwhile (the masters run in it, one unit each), and
        the first stage with units for the workers finds them ready. Without this the cluster
        starts when first used."""
        if self._client is not None or self._starting is not None:
            return

        def start() -> None:
            self._connect()
            self._client.run(warm_imports)

        self._start_in_thread(start, "darkroom-dask-start")

    @property
    def client(self):
        """The Dask client; a local cluster starts on first use (a run whose stages have at most
        one unit each, such as a re-run with nothing new, never pays for its start) or when
        :meth:`start` asks for it."""
        self._wait_for_start()
        if self._client is None:
            self._connect()
        return self._client

    def _connect(self) -> None:
        if self._client is None:
            import dask
            from distributed import Client, LocalCluster

            # Dask's nannies set MALLOC_TRIM_THRESHOLD_ (64 KiB) in their workers, which also fixes
            # glibc's mmap threshold: every large numpy temporary is then mapped and unmapped anew.
            # Measured on 40 objects of `darkroom analyze` (matched filter, periodogram): worker
            # CPU 21.7 s with it, 13.9 s without (10.4 s serially in the driver). Large arrays
            # (> 32 MB, the dynamic threshold's ceiling) still go back to the system when freed.
            environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
            environ.pop("MALLOC_TRIM_THRESHOLD_", None)
            settings = {
                "distributed.nanny.pre-spawn-environ": environ,
                # The local cluster has no dashboard to show them: the workers' statistical
                # profiler (a stack sample every 10 ms in each worker), the event loops' 20 ms
                # tick and the 0.5 s system monitor only take CPU and the driver's GIL (its
                # scheduler runs in a thread of the driver). bench_night, 2 workers: 16.5-17.8
                # -> 16.4 s; calibrate 5.0-5.4 -> 4.7 s, the driver's own stages ~5 % faster.
                "distributed.worker.profile.enabled": False,
                "distributed.admin.tick.interval": "1s",
                "distributed.admin.system-monitor.interval": "5s",
            }
            if _use_forkserver():
                settings["distributed.worker.multiprocessing-method"] = "forkserver"
            with dask.config.set(settings):
                self.cluster = LocalCluster(
                    n_workers=self.n_workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    memory_limit=self.memory_limit,
                    # Worker processes log to the console they inherit; start-up, shutdown and
                    # "killed by signal" chatter is not for people (unit errors come back as results).
                    silence_logs=logging.ERROR,
                )
            self._client = Client(self.cluster)
            log.info("dask executor on %s", self._client.scheduler.address)

    def map_units(self, fn, units):
        from distributed import as_completed

        tag = uuid.uuid4().hex[:8]
        source = iter(units)
        n_workers = max(len(self.client.scheduler_info().get("workers", {})), 1)
        # A bounded number of batches in flight (units are claimed lazily by the runner, as a
        # batch is formed). Batches spare the scheduler and the driver a round trip per unit;
        # they stay small so that the last batches do not leave a worker idle for long.
        window = max(2 * n_workers, 2)
        batch = self.batch_size
        futures = {}

        def submit_next() -> bool:
            chunk = list(itertools.islice(source, batch))
            if not chunk:
                return False
            key = f"{chunk[0].key}+{len(chunk) - 1}-{tag}"
            futures[self.client.submit(_run_batch, fn, chunk, key=key, pure=False, retries=0)] = chunk
            return True

        for _ in range(window):
            if not submit_next():
                break
        pending = as_completed(list(futures))
        for fut in pending:
            chunk = futures.pop(fut)
            try:
                outcomes = fut.result()
            except Exception as exc:  # the batch itself failed (a worker died): every unit in it did
                outcomes = [(None, exc)] * len(chunk)
            for unit, (result, error) in zip(chunk, outcomes, strict=True):
                yield unit, result, error
            fut.release()
            if submit_next():
                pending.add(list(futures)[-1])

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a start that failed has nothing to close
            self._wait_for_start()
        if self._client is not None:
            self._client.close()
        if self.cluster is not None:
            self.cluster.close()


def make_executor(*, workers: int = 0, scheduler: str | None = None) -> Executor:
    """Serial when ``workers`` is 0 and no scheduler is given; on a Dask cluster of the user's with
    ``scheduler``; else on ``workers`` local worker processes
    (:class:`~darkroom.pipeline.local_workers.LocalWorkersExecutor`)."""
    if scheduler:
        return DaskExecutor(n_workers=workers or None, scheduler=scheduler)
    if workers > 0:
        from darkroom.pipeline.local_workers import LocalWorkersExecutor

        return LocalWorkersExecutor(n_workers=workers)
    return SerialExecutor()
