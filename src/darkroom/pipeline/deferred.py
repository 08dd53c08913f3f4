"""Deferred writes: a stage's product file written by a thread while the next unit computes.

A stage that mixes in :class:`DeferredWrites` hands each product's write to its one writer
thread and returns the file's SHA-256 as a :class:`~concurrent.futures.Future` while the runner
defers writes (:meth:`~darkroom.pipeline.stage.Stage.begin_deferred_writes`: in the driver's
own process, and within a batch of units on a Dask worker). :meth:`settle` waits for the write
before the unit is recorded, so a registry row never exists without its durable file. Without
deferral the write is waited for before :meth:`run` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, ClassVar

from darkroom.repo.store import atomic_write_bytes, sha256_bytes

__all__ = ["DeferredWrites", "write_bytes_durably"]


def write_bytes_durably(path: Path, data: bytes) -> str:
    """Write ``data`` durably to ``path`` (atomically: temporary name, fsync, rename) and return
    its SHA-256 (hex)."""
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


class DeferredWrites:
    """Mixin for a :class:`~darkroom.pipeline.stage.Stage` whose ``run`` result carries its
    product's SHA-256 under ``"sha256"`` (a Future while deferred)."""

    defers_writes: ClassVar[bool] = True

    def begin_deferred_writes(self) -> None:
        self._deferring = True

    def end_deferred_writes(self) -> None:
        self._deferring = False
        writer, self._writer = getattr(self, "_writer", None), None
        if writer is not None:
            writer.shutdown(wait=True)  # every write still going ends here

    def settle(self, result: dict[str, Any]) -> dict[str, Any]:
        sha256 = result["sha256"]
        return {**result, "sha256": sha256.result()} if isinstance(sha256, Future) else result

    def writes_done(self, timeout: float = 0.0) -> bool:
        last = getattr(self, "_last_write", None)  # the one writer thread writes in turn
        return last is None or bool(wait([last], timeout=timeout).done)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_writer", None)  # the driver's thread: a worker makes its own
        state.pop("_last_write", None)
        return state

    def _write_pool(self) -> ThreadPoolExecutor:
        """The stage's one writer thread in this process (made on first use)."""
        if getattr(self, "_writer", None) is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="darkroom-write")
        return self._writer

    @property
    def deferring(self) -> bool:
        """Whether :meth:`run` may return before its file is written (see the module)."""
        return getattr(self, "_deferring", False)

    def write_in_thread(
        self, write: Callable[..., str], *args: Any, wait: bool | None = None
    ) -> str | Future:
        """``write(*args)`` (which returns the file's SHA-256) on the writer thread: its Future
        while deferring (or with ``wait=False``: the caller works on, then settles it), else its
        value once written."""
        future = self._last_write = self._write_pool().submit(write, *args)
        keep = (not self.deferring) if wait is None else wait
        return future.result() if keep else future

    def write_bytes_in_thread(self, path: Path, data: bytes) -> str | Future:
        """``data`` written durably to ``path`` on the writer thread (see :meth:`write_in_thread`);
        the file's SHA-256, or its Future while deferring."""
        return self.write_in_thread(write_bytes_durably, path, data)
