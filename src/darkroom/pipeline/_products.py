"""Small helpers shared by the stage modules: product names and JSON-safe values."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["jsonable", "raw_stem", "safe_file_name", "safe_name", "shared_folder", "short_hash"]


def short_hash(text: str) -> str:
    """10 hex digits identifying a group or field key in product file names."""
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def jsonable(obj: Any) -> Any:
    """Plain JSON types for the registry's JSON columns (numpy to Python, NaN and infinities to None)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def raw_stem(path: str | Path) -> str:
    """A raw file's name without its FITS and compression suffixes (``a.fits.gz`` -> ``a``)."""
    name = Path(path).name
    for suffix in (".gz", ".bz2", ".fz", ".fits", ".fit", ".fts", ".FITS", ".FIT", ".FTS"):
        name = name.removesuffix(suffix)
    return name


def safe_file_name(text: str) -> str:
    """``text`` with anything but letters, digits and ``_.+-`` replaced, for a product file name."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)[:80] or "unknown"


def safe_name(text: str) -> str:
    """A file-name-safe form of a target name (surrounding blanks dropped; ``target`` when empty)."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text.strip())[:80] or "target"


def shared_folder(root: Path, setting: str | Path) -> Path:
    """A folder setting shared between repositories (``~/.cache/darkroom/...``): ``~`` expanded; a
    relative path is relative to the repository ``root``."""
    path = Path(setting).expanduser()
    return path if path.is_absolute() else Path(root) / path
