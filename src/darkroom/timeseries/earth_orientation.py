"""astropy's Earth-orientation (IERS) table, parsed once and kept in a cache folder.

BJD_TDB and airmass (:mod:`darkroom.timeseries.times`) need UT1-UTC and polar motion, which
astropy takes from ``astropy.utils.iers.IERS_Auto``: on its first use in a process it parses
the bundled IERS-A (``finals2000A.all``) and IERS-B (``eopc04``) text files with the CDS
reader, ~1 s of CPU for every ``darkroom run`` that reaches the light curves. The parsed
table is the same every time for the same files, so :func:`use_cached_earth_orientation`
keeps it as a pickle in a cache folder (the repository's ``catalogs/cache``) and hands it to
astropy in later processes (~10 ms). Values are unchanged: the table is the one
``IERS_Auto.read()`` makes (column bytes, units and meta round-trip exactly), and what astropy
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


def use_cached_earth_orientation(cache_dir: Path | str) -> bool:
    """Give astropy its parsed IERS_Auto table from ``cache_dir`` (writing it there the first time).

    Returns True when the table came from the cache, False when it was parsed here (and
    saved) or astropy's own loading applies (see the module docstring). The cache holds a
    pickle: ``cache_dir`` must be a folder only the user writes (the repository's own).
    """
    from astropy.utils import iers

    try:
        name = _cache_name()
    except OSError:  # the bundled files are not where astropy says: let astropy report it
        return False
    if name is None:
        return False
    path = Path(cache_dir) / name
    if path.is_file():
        try:
            table = pickle.loads(path.read_bytes())
        except Exception as exc:  # a torn or foreign cache file is parsed again and rewritten below
            log.debug("IERS cache %s unreadable (%s); parsing the bundled tables", path, exc)
        else:
            if type(table) is iers.IERS_Auto:
                iers.IERS_Auto.iers_table = table
                return True
    # exactly what IERS_Auto.open() does on its first call
    table = iers.IERS_Auto.read()
    iers.IERS_Auto.iers_table = table
    with contextlib.suppress(OSError):  # a read-only repository still gets its light curves
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, pickle.dumps(table, protocol=pickle.HIGHEST_PROTOCOL), durable=False)
    return False
