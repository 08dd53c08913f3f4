"""``--workers N`` on this machine: N worker processes fed batches of units through pipes.

A local Dask cluster runs its scheduler in the driver's process and an event loop, heartbeats
and a nanny beside every worker; on the ARCSAT night (2 cores) that bookkeeping took ~0.6 s
of the stages' wall time and ~0.4 s of the driver's CPU (``bench/bench_night.py``). Here the
driver talks to each worker over one pipe, and the operating system tells it when a worker
has died (the process's sentinel), so nothing polls. Dask stays the executor for a cluster of
the user's (``--scheduler``), whose workers may live on other hosts.

Each worker is a process forked from the fork server that
:func:`~darkroom.pipeline.executors.prepare_local_workers` starts with the per-frame stages' libraries and compiled kernels loaded once (where there is
no fork server, a fresh interpreter that imports them itself). It takes batches of
units in the order the driver hands them out, runs them as :func:`compute_batch` does (each
unit's file written while the next unit computes), and hands the finished batch to a sender
thread that waits for its last writes (:func:`settle_batch`) and ships the results while the
next batch computes: the same overlap a serial run has between one unit's write and the next
unit's computing. The driver keeps two batches queued at each worker, so a worker never waits
for the driver between batches.

A worker tells the driver which batch it starts (``("started", batch)``) and ships each
finished one (``("done", batch, outcomes)``). When it dies (killed, out of memory, a crash in a
library), the units of the batch it was computing fail with a one-line reason; a new worker
takes its place and gets the batches the dead one held besides (queued, or computed and not yet
shipped), once: units are idempotent, and a batch that ends a second worker fails. A result or
an error that cannot travel to the driver fails its own unit. Ctrl-C reaches the driver only
(the workers ignore SIGINT), which ends the workers as it ends; a worker whose driver was killed
exits when its pipe closes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import pickle
import queue
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler
from typing import Any

from darkroom.pipeline.executors import (
    StartsInBackground,
    compute_batch,
    set_forkserver_preload,
    settle_batch,
    warm_imports,
)
from darkroom.pipeline.runner import Executor, one_line
from darkroom.pipeline.stage import Unit

__all__ = ["LocalWorkersExecutor", "WorkerDiedError"]

log = logging.getLogger(__name__)

#: batches queued at each worker: one computing, one ready to start the moment it ends
QUEUED_PER_WORKER = 2
#: seconds a worker gets to finish its writes and exit when the run ends, before it is killed
EXIT_GRACE_S = 10.0


class WorkerDiedError(RuntimeError):
    """The worker process running a unit ended before returning it."""


def _shippable(outcome: tuple[Any, BaseException | None]) -> tuple[Any, BaseException | None]:
    """``outcome`` if it can travel to the driver and be read there, else the unit's failure with
    the reason (an error of a class that does not unpickle there becomes its one-line text)."""
    error = outcome[1]
    try:
        data = ForkingPickler.dumps(outcome)
        if error is not None:  # an error's class must also rebuild from its pickle
            pickle.loads(data)
        return outcome
    except Exception as exc:
        if error is not None:
            return None, RuntimeError(one_line(error))
        return None, RuntimeError(f"its result could not be sent to the driver: {one_line(exc)}")


def _worker_main(conn: Connection) -> None:
    """A worker's life: load the stages' libraries, then run the batches the driver sends until it
    sends an empty message (or its pipe closes), each finished batch settled and shipped by a sender
    thread while the next one computes. A batch that cannot be read here fails as a whole, with
    the reason, and the worker goes on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when the run ends
    logging.getLogger().setLevel(logging.ERROR)  # unit errors come back as results
    warm_imports()
    finished: queue.SimpleQueue = queue.SimpleQueue()
    sending = threading.Lock()  # the main thread says which batch it starts, the sender the results

    def send(message: tuple) -> None:
        with sending:
            conn.send(message)

    def send_finished() -> None:
        while (item := finished.get()) is not None:
            batch_id, stage, defer, outcomes = item
            if not isinstance(outcomes, str):  # a str: why the whole batch failed
                outcomes = [
                    o if o[1] is None else _shippable(o) for o in settle_batch(stage, defer, outcomes)
                ]
            try:
                send(("done", batch_id, outcomes))
            except OSError:
                return  # the driver is gone
            except Exception:  # a result that does not pickle: that unit fails
                with contextlib.suppress(OSError):
                    send(("done", batch_id, [_shippable(o) for o in outcomes]))

    sender = threading.Thread(target=send_finished, name="darkroom-send", daemon=True)
    sender.start()
    try:
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                break
            if not data:  # the driver's "no more batches"
                break
            batch_id = int.from_bytes(data[:8], "little")
            try:
                send(("started", batch_id))
            except OSError:
                break
            try:
                fn, units = pickle.loads(data[8:])
            except Exception as exc:  # e.g. a stage class this process cannot import
                finished.put((batch_id, None, False, f"the worker could not read the units: {one_line(exc)}"))
                continue
            finished.put((batch_id, *compute_batch(fn, units)))
    finally:
        finished.put(None)
        sender.join()


@dataclass
class _Worker:
    """The driver's side of one worker: its process, pipe and the batches it holds, oldest first."""

    process: Any
    conn: Connection
    batches: deque = field(default_factory=deque)  # (batch_id, units, handed again)
    running: int | None = None  # the batch it said it started last


class LocalWorkersExecutor(StartsInBackground, Executor):
    """Runs units in batches on ``n_workers`` local worker processes (see the module docstring)."""

    name = "processes"

    def __init__(self, n_workers: int = 2, *, batch_size: int = 4) -> None:
        self.n_workers = max(int(n_workers), 1)
        self.batch_size = max(int(batch_size), 1)
        self._workers: list[_Worker] = []
        self._batch_ids = itertools.count()
        self.n_restarted = 0

    # -- workers -----------------------------------------------------------------------------

    def _context(self):
        return multiprocessing.get_context("forkserver" if set_forkserver_preload() else "spawn")

    def _new_worker(self) -> _Worker:
        ours, theirs = multiprocessing.Pipe(duplex=True)
        process = self._context().Process(
            target=_worker_main, args=(theirs,), name="darkroom-worker", daemon=True
        )
        process.start()
        theirs.close()
        return _Worker(process=process, conn=ours)

    def start(self) -> None:
        """Start the workers now, in a background thread (the fork server may still be loading
        the libraries): the driver goes on with the masters meanwhile."""
        if self._workers or self._starting is not None:
            return
        self._start_in_thread(self._start_workers, "darkroom-workers-start")

    def _start_workers(self) -> None:
        while len(self._workers) < self.n_workers:
            self._workers.append(self._new_worker())

    def _ready(self) -> list[_Worker]:
        self._wait_for_start()
        self._start_workers()
        return self._workers

    def worker_pids(self) -> list[int]:
        """The process ids of the running workers (for measuring their CPU)."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    # -- units -------------------------------------------------------------------------------

    def map_units(
        self, fn: Callable[[Unit], Any], units: Iterable[Unit]
    ) -> Iterator[tuple[Unit, Any, BaseException | None]]:
        workers = self._ready()
        source = iter(units)
        exhausted = False

        def hand_out(worker: _Worker, up_to: int = QUEUED_PER_WORKER) -> None:
            nonlocal exhausted
            while not exhausted and len(worker.batches) < up_to:
                chunk = list(itertools.islice(source, self.batch_size))
                if not chunk:
                    exhausted = True
                    return
                if not self._send(worker, fn, next(self._batch_ids), chunk, handed_again=False):
                    return

        # the first batches go to the workers in turn, so that each starts at once
        for up_to in range(1, QUEUED_PER_WORKER + 1):
            for worker in workers:
                hand_out(worker, up_to)
        while any(w.batches for w in workers):
            busy = [w for w in workers if w.batches]
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                if worker.conn not in ready and worker.process.sentinel not in ready:
                    continue
                message = self._receive(worker)
                if message is None:  # the worker has died
                    yield from self._after_death(worker, fn, hand_out)
                    continue
                if message[0] == "started":
                    worker.running = message[1]
                    continue
                _, batch_id, outcomes = message
                held_id, chunk, _ = worker.batches.popleft()
                if held_id != batch_id:  # a worker answers its batches in the order it got them
                    raise RuntimeError(f"a worker answered batch {batch_id} where {held_id} was due")
                if isinstance(outcomes, str):  # the batch as a whole failed, for this reason
                    outcomes = [(None, RuntimeError(outcomes))] * len(chunk)
                hand_out(worker)
                for unit, (result, error) in zip(chunk, outcomes, strict=True):
                    yield unit, result, error

    @staticmethod
    def _receive(worker: _Worker) -> tuple | None:
        """The worker's next message (``("started", batch)``, ``("done", batch, outcomes)``); None
        when it has died with nothing more to say."""
        try:
            if worker.conn.poll():  # a message, or the end of the pipe
                return worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(timeout=EXIT_GRACE_S)  # for its exit code
            return None
        except Exception as exc:  # its results did not unpickle here: that batch failed, the worker lives
            batch_id, chunk, _ = worker.batches[0]  # only results can fail to unpickle
            error = RuntimeError(f"its result could not be read from the worker: {exc}")
            return "done", batch_id, [(None, error)] * len(chunk)
        worker.process.join()  # woken by its sentinel with the pipe empty: it has ended
        return None

    @staticmethod
    def _send(worker: _Worker, fn: Callable, batch_id: int, chunk: list[Unit], *, handed_again: bool) -> bool:
        """Queue a batch at ``worker``; False when its pipe is closed (it has died)."""
        data = bytes(ForkingPickler.dumps((fn, chunk)))  # a stage that does not pickle fails here
        worker.batches.append((batch_id, chunk, handed_again))
        try:
            worker.conn.send_bytes(batch_id.to_bytes(8, "little") + data)
        except OSError:
            return False
        return True

    def _after_death(
        self, worker: _Worker, fn: Callable, hand_out: Callable[[_Worker], None]
    ) -> Iterator[tuple[Unit, Any, BaseException | None]]:
        """A worker has died: the units of the batch it was computing fail with the reason; a new
        worker takes its place and gets the other batches it held (queued, or computed and not yet
        shipped), once: units are idempotent, and a batch that ends a second worker fails."""
        code = worker.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        error = WorkerDiedError(f"the worker process running this unit ended ({how})")
        held = list(worker.batches)
        worker.batches.clear()
        new = self._replace(worker)
        for batch_id, chunk, handed_again in held:
            if batch_id == worker.running or handed_again:
                log.warning("a worker process ended (%s) while running %d units", how, len(chunk))
                for unit in chunk:
                    yield unit, None, error
            elif not self._send(new, fn, batch_id, chunk, handed_again=True):
                break  # the new worker died at once: its sentinel says so
        hand_out(new)

    def _replace(self, dead: _Worker) -> _Worker:
        dead.conn.close()
        self.n_restarted += 1
        worker = self._new_worker()
        self._workers[self._workers.index(dead)] = worker
        return worker

    def close(self) -> None:
        """Ask every worker to finish and exit; kill those that do not within :data:`EXIT_GRACE_S`."""
        with contextlib.suppress(Exception):  # a start that failed has nothing to close
            self._wait_for_start()
        for worker in self._workers:
            with contextlib.suppress(OSError):  # a worker that has died already
                worker.conn.send_bytes(b"")
        for worker in self._workers:
            worker.process.join(timeout=EXIT_GRACE_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._workers = []
