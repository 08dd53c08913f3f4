"""File store helpers: checksums and atomic writes.

A product file is written under a temporary name in the same folder, flushed and
fsynced, then renamed into place (``os.replace`` is atomic on POSIX), and the
folder is fsynced so the rename survives a crash. A crash therefore leaves either
the old file, the new file, or a ``.tmp-*`` file that :func:`remove_orphan_temps`
clears; never a half-written product under its real name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "TEMP_PREFIX",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "remove_orphan_temps",
    "sha256_file",
]

TEMP_PREFIX = ".tmp-"
_HOST = socket.gethostname().replace("-", "_")
_CHUNK = 1 << 20


def sha256_file(path: Path | str) -> str:
    """SHA-256 of a file's bytes as they are on disk (compressed files are not expanded)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    # Directory fsync makes the rename durable; not every filesystem supports it.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it into place.

    The caller writes the temporary file (with any library) and closes it; the
    context fsyncs it, renames it over ``path`` and fsyncs the folder. On an
    exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's host and pid are in the name, so cleanup never removes a live writer's file.
    prefix = f"{TEMP_PREFIX}{_HOST}-{os.getpid()}-"
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.unlink()  # let the writer create it (astropy refuses to overwrite by default)
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: Path | str, data: bytes | Callable[[BinaryIO], None]) -> Path:
    """Write bytes (or call ``data(fh)`` to stream them) atomically to ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        if callable(data):
            data(fh)
        else:
            fh.write(data)
        fh.flush()
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write UTF-8 text atomically to ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _writer_alive(name: str, *, max_age_s: float, mtime: float) -> bool:
    """Is the process that is writing this temporary file still running?"""
    import time

    parts = name[len(TEMP_PREFIX) :].split("-")
    if len(parts) >= 3 and parts[0] == _HOST and parts[1].isdigit():
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # Another host (shared storage) or an unknown name: trust it only while it is young.
    return time.time() - mtime < max_age_s


def remove_orphan_temps(root: Path | str, *, max_age_s: float = 24 * 3600) -> list[Path]:
    """Delete temporary files left below ``root`` by writers that are no longer running."""
    removed = []
    for tmp in Path(root).rglob(f"{TEMP_PREFIX}*"):
        try:
            if tmp.is_file() and not _writer_alive(tmp.name, max_age_s=max_age_s, mtime=tmp.stat().st_mtime):
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # renamed into place meanwhile
            continue
    return removed
