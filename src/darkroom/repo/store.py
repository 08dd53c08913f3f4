"""The repository's file store: checksums and atomic writes (see :mod:`darkroom.io.atomic`).

The helpers live in :mod:`darkroom.io` so that the algorithm packages that write
files (reports, plots) use them without reaching up into the registry layer.
"""

from __future__ import annotations

from darkroom.io.atomic import (
    TEMP_PREFIX,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    remove_orphan_temps,
    sha256_bytes,
    sha256_file,
)

__all__ = [
    "TEMP_PREFIX",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "remove_orphan_temps",
    "sha256_bytes",
    "sha256_file",
]
