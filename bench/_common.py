"""Shared helpers for the benchmark scripts: timing, peak memory, a plain table."""

from __future__ import annotations

import resource
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

__all__ = ["as_installed", "measure", "print_table"]


def as_installed() -> None:
    """Make darkroom's code ready as an installed copy has it before a timed run: its modules
    byte-compiled (pip compiles an installed package; an editable one relies on Python writing
    the bytecode on first import, which PYTHONDONTWRITEBYTECODE stops, and every fresh process
    would then compile ~200 modules anew, ~0.25 s), and its numba kernels compiled and cached
    (``make`` does both after installing; a change to a kernel's source compiles it anew, ~20 s)."""
    import compileall
    from pathlib import Path

    import darkroom
    from darkroom.pipeline.kernels import load_compiled_kernels

    compileall.compile_dir(Path(darkroom.__file__).parent, quiet=1)
    load_compiled_kernels()


def measure(fn: Callable[[], Any], *, repeat: int = 1) -> tuple[float, float, Any]:
    """Best wall time [s] over ``repeat`` runs and the traced peak memory [MB] of one run."""
    best = float("inf")
    result = None
    for i in range(repeat):
        if i == 0:
            tracemalloc.start()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
        if i == 0:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            peak_mb = peak / 1e6
    return best, peak_mb, result


def max_rss_mb() -> float:
    """Peak resident set size of this process so far [MB]."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print rows as an aligned text table (keys of the first row are the columns)."""
    if not rows:
        return
    cols = list(rows[0])
    cells = [[c for c in cols]] + [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    for j, row in enumerate(cells):
        print("  ".join(v.rjust(w) if j else v.ljust(w) for v, w in zip(row, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)
