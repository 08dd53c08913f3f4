"""astropy's Earth-orientation (IERS) table, parsed once and kept in a cache folder.

BJD_TDB and airmass (:mod:`darkroom.timeseries.times`) need UT1-UTC and polar motion, which
astropy takes from ``astropy.utils.iers.IERS_Auto``: on its first use in a process it parses
the bundled IERS-A (``finals2000A.all``) and IERS-B (``eopc04``) text files with the CDS
reader, ~1 s of CPU for every ``darkroom run`` that reaches the light curves. The parsed
table is the same every time for the same files, so :func:`use_cached_earth_orientation`
keeps it as a pickle in cache folders (one shared by the user's repositories,
``~/.cache/darkroom/iers`` by default, and the repository's own) and hands it to astropy in
later processes (~10 ms): a new repository does not parse it again. Values are unchanged:
the table is the one ``IERS_Auto.read()`` makes (column bytes, units and meta round-trip exactly), and what astropy
does with it afterwards (interpolation, its own download policy) is untouched.

The cache is used only when astropy would read its bundled defaults: no table loaded in
this process yet (``IERS_Auto``/``IERS_B``), and no ``finals2000A.all`` in the working
directory (astropy would read that one). Its name holds the astropy version and the
bundled files' paths, sizes and modification times, so an upgraded astropy or IERS data
package makes a new one. A cache file that cannot be read is ignored and rewritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

from darkroom.io.atomic import atomic_write_bytes

__all__ = ["use_cached_earth_orientation"]

log = logging.getLogger(__name__)


def _cache_name() -> str | None:
    """The cache file's name for astropy's bundled IERS files, None when astropy would not read them."""
    import astropy
    from astropy.utils import iers

    if iers.IERS_Auto.iers_table is not None or iers.IERS_B.iers_table is not None:
        return None  # already loaded (or set by the caller): astropy keeps its own
    if os.path.exists("finals2000A.all"):
        return None  # astropy reads this file from the working directory instead
    parts = [astropy.__version__]
    for name in ("IERS_A_FILE", "IERS_A_README", "IERS_B_FILE", "IERS_B_README"):
        path = os.fspath(getattr(iers, name))
        st = os.stat(path)
        parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    return f"iers-auto-{hashlib.sha256(chr(10).join(parts).encode()).hexdigest()[:16]}.pickle"


def use_cached_earth_orientation(cache_dirs: Path | str | Sequence[Path | str]) -> bool:
    """Give astropy its parsed IERS_Auto table from the first of ``cache_dirs`` that holds it
    (written to each of them that lacks it and can be written).

    Returns True when the table came from a cache, False when it was parsed here (and saved)
    or astropy's own loading applies (see the module docstring). A cache holds a pickle: each
    folder must be one only the user writes (their own cache folder, the repository's).
    """
    from astropy.utils import iers

    try:
        name = _cache_name()
    except OSError:  # the bundled files are not where astropy says: let astropy report it
        return False
    if name is None:
        return False
    dirs = [cache_dirs] if isinstance(cache_dirs, str | Path) else list(cache_dirs)
    paths = [Path(d) / name for d in dirs]
    table, content, missing = None, None, []
    for path in paths:
        if table is None:
            table, content = _load(path)
            if table is None:  # none there, or a torn or foreign file: written below
                missing.append(path)
        elif not path.is_file():
            missing.append(path)
    from_cache = table is not None
    if table is None:  # exactly what IERS_Auto.open() does on its first call
        table = iers.IERS_Auto.read()
    iers.IERS_Auto.iers_table = table
    if missing:
        if content is None:
            content = pickle.dumps(table, protocol=pickle.HIGHEST_PROTOCOL)
        # else the bytes of the cache it came from, copied (pickling the table again: ~13 ms)
        for path in missing:
            with contextlib.suppress(OSError):  # a read-only folder: the light curves still come
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, content, durable=False)
    return from_cache


def _load(path: Path) -> tuple[object | None, bytes | None]:
    """The IERS_Auto table pickled at ``path`` and the file's bytes, or (None, None) (no file, or
    a torn or foreign one)."""
    from astropy.utils import iers

    if not path.is_file():
        return None, None
    try:
        content = path.read_bytes()
        table = pickle.loads(content)
    except Exception as exc:  # parsed again and rewritten by the caller
        log.debug("IERS cache %s unreadable (%s)", path, exc)
        return None, None
    return (table, content) if type(table) is iers.IERS_Auto else (None, None)
