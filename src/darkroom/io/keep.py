"""What one read of a file made, kept in memory for the next read of the same file in this process.

``darkroom run --ingest`` reads every raw file twice: ingest reads it whole (which proves it is
not truncated and its compressed stream not damaged), then the masters or the calibrate stage
read it again. On the ARCSAT night (96 gzip-compressed 1k x 1k frames) the second read costs
~10 ms a frame: expanding the gzip stream, parsing the header, converting the pixels. While a
:func:`keeping` block is open, a reader may leave what it read here and the next reader take it.

The keeper is bounded: it stops taking new items when ``max_bytes`` are held (it never evicts:
in a night every file is read twice in no particular order, so any item is as good as another),
and an item is handed out once (:meth:`Keeper.take` removes it, so no two readers share one
object and the memory goes as the items are used). Keys name the file's identity and state
(device, inode, size, modification time in ns): a file changed between the reads is read anew.
Thread-safe. Nothing here knows what an item is.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Keeper", "active_keeper", "file_key", "keeping", "memory_budget_bytes", "release_kept"]


class Keeper:
    """A bounded store of items, each handed out once."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(int(max_bytes), 0)
        self.pid = os.getpid()  # a forked child (a pool of readers) inherits the block, not the keeper
        self._items: dict[Hashable, tuple[Any, int]] = {}
        self._held = 0
        self._lock = threading.Lock()
        self.n_kept = 0  #: items taken in
        self.n_taken = 0  #: items handed out again
        self.n_refused = 0  #: items offered when there was no room

    @property
    def held_bytes(self) -> int:
        """Bytes of the items held now (as their owners counted them)."""
        return self._held

    def offer(self, key: Hashable, make: Callable[[], Any], nbytes: int) -> bool:
        """Keep the item ``make()`` returns (``nbytes`` of memory) under ``key`` when there is
        room; True if kept. ``make`` is called only then (an item is often a copy)."""
        with self._lock:
            if key in self._items:
                return False
            if self._held + nbytes > self.max_bytes:
                self.n_refused += 1
                return False
            self._items[key] = (make(), nbytes)
            self._held += nbytes
            self.n_kept += 1
            return True

    def take(self, key: Hashable) -> Any | None:
        """The item kept under ``key``, removed from the keeper; None when there is none."""
        with self._lock:
            found = self._items.pop(key, None)
            if found is None:
                return None
            self._held -= found[1]
            self.n_taken += 1
            return found[0]

    def clear(self) -> None:
        """Let go of every item."""
        with self._lock:
            self._items.clear()
            self._held = 0


_ACTIVE: list[Keeper] = []


def active_keeper() -> Keeper | None:
    """The keeper of the innermost open :func:`keeping` block of this process, or None."""
    if not _ACTIVE or _ACTIVE[-1].pid != os.getpid():
        return None
    return _ACTIVE[-1]


@contextmanager
def keeping(max_bytes: int) -> Iterator[Keeper | None]:
    """Within the block, readers keep what they read (at most ``max_bytes``) for the next reader
    of the same file. ``max_bytes`` <= 0 keeps nothing (yields None). Everything kept is let go
    when the block ends."""
    if max_bytes <= 0:
        yield None
        return
    keeper = Keeper(max_bytes)
    _ACTIVE.append(keeper)
    try:
        yield keeper
    finally:
        _ACTIVE.remove(keeper)
        keeper.clear()


def release_kept() -> None:
    """Let go of what the open blocks hold (their readers are done), keeping the blocks open."""
    for keeper in _ACTIVE:
        keeper.clear()


def file_key(st: os.stat_result, *extra: Hashable) -> tuple[Hashable, ...]:
    """A key for the content of the file ``st`` describes: device, inode, size and modification
    time [ns], then ``extra`` (how it was read)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, *extra)


def memory_budget_bytes(wanted_mb: float, *, share: float = 0.25) -> int:
    """``wanted_mb`` MiB, but no more than ``share`` of the memory available now (psutil's
    ``available``: free memory plus what the system can reclaim without swapping)."""
    import psutil

    wanted = int(max(wanted_mb, 0.0) * (1 << 20))
    return min(wanted, int(share * psutil.virtual_memory().available))
