"""Executors beyond the serial one: Dask, on a LocalCluster or an existing scheduler.

Workers only compute and write product files; results come back to the driver,
which alone records them, so a Dask run and a serial run write the same rows.
``--workers N`` starts a LocalCluster of N single-threaded worker processes (the
numerical libraries release the GIL but keep their own threads busy, so one
thread per process avoids oversubscribing the cores); ``--scheduler ADDRESS``
connects to a running cluster whose workers see the repository at the same path.
"""

from __future__ import annotations

import logging
import uuid

from darkroom.pipeline.runner import Executor, SerialExecutor

__all__ = ["DaskExecutor", "make_executor"]

log = logging.getLogger(__name__)


class DaskExecutor(Executor):
    """Runs units as Dask futures and yields them as they complete."""

    name = "dask"

    def __init__(
        self, *, n_workers: int | None = None, scheduler: str | None = None, memory_limit: str = "auto"
    ):
        from distributed import Client, LocalCluster

        self.cluster = None
        if scheduler:
            self.client = Client(scheduler)
        else:
            self.cluster = LocalCluster(
                n_workers=n_workers or 2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                memory_limit=memory_limit,
                # Worker processes log to the console they inherit; start-up, shutdown and
                # "killed by signal" chatter is not for people (unit errors come back as results).
                silence_logs=logging.ERROR,
            )
            self.client = Client(self.cluster)
        log.info("dask executor on %s", self.client.scheduler.address)

    def map_units(self, fn, units):
        from distributed import as_completed

        tag = uuid.uuid4().hex[:8]
        source = iter(units)
        # Keep a bounded number of units in flight (claimed lazily by the runner).
        window = max(2 * len(self.client.scheduler_info().get("workers", {})), 2)
        futures = {}

        def submit_next() -> bool:
            unit = next(source, None)
            if unit is None:
                return False
            futures[self.client.submit(fn, unit, key=f"{unit.key}-{tag}", pure=False, retries=0)] = unit
            return True

        for _ in range(window):
            if not submit_next():
                break
        pending = as_completed(list(futures))
        for fut in pending:
            unit = futures.pop(fut)
            try:
                result = fut.result()
            except Exception as exc:
                yield unit, None, exc
            else:
                yield unit, result, None
            fut.release()
            if submit_next():
                pending.add(list(futures)[-1])

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def make_executor(*, workers: int = 0, scheduler: str | None = None) -> Executor:
    """Serial when ``workers`` is 0 and no scheduler is given, Dask otherwise."""
    if scheduler or workers > 0:
        return DaskExecutor(n_workers=workers or None, scheduler=scheduler)
    return SerialExecutor()
