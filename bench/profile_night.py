"""Where the ARCSAT night's time goes: ingest and every stage under cProfile, serially.

Prints, per stage, its wall time and the functions with the most own time
(``tottime``) inside it, grouped into the cost classes issue 15 asks about:
FITS read/write and compression, header parsing, registry transactions,
Parquet, numerical work, and the rest. The profile of the whole night is kept
as ``night.prof`` in the output folder (``--out``; a temporary one by default)
for ``python -m pstats`` or snakeviz.

Run: .venv/bin/python bench/profile_night.py [--top 12] [--out DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import print_table

XO1 = "targets=[{name: XO-1, ra_deg: 240.549333, dec_deg: 28.169556}]"

# cost classes by the file a function lives in (first match wins)
_CLASSES = (
    ("gzip / zlib", ("gzip.py", "zlib", "_compression.py", "compression")),
    ("FITS I/O", ("astropy/io/fits",)),
    ("registry (SQL)", ("sqlalchemy", "sqlite3", "psycopg", "alembic")),
    ("Parquet / Arrow", ("pyarrow",)),
    ("cosmic rays", ("astroscrappy",)),
    ("sep", ("sep",)),
    ("WCS", ("astropy/wcs", "wcs.py")),
    ("astropy other", ("astropy/",)),
    ("numpy / scipy", ("numpy", "scipy")),
    ("darkroom", ("darkroom/",)),
)


def _class(filename: str) -> str:
    for name, keys in _CLASSES:
        if any(k in filename for k in keys):
            return name
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins (C)"
    return "other Python"


def breakdown(stats: pstats.Stats) -> dict[str, float]:
    """Own time [s] per cost class."""
    out: dict[str, float] = defaultdict(float)
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        key = _class(filename)
        if key == "builtins (C)":
            # C builtins are attributed by name: zlib, file reads, sqlite, numpy
            f = func.lower()
            if "zlib" in f or "decompress" in f or "compress" in f:
                key = "gzip / zlib"
            elif "sqlite" in f or "execute" in f or "commit" in f:
                key = "registry (SQL)"
            elif "numpy" in f or "ufunc" in f or "reduce" in f or "array" in f:
                key = "numpy / scipy"
            elif "read" in f or "write" in f or "fsync" in f or "open" in f or "seek" in f:
                key = "file system"
        out[key] += tt
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=8, help="functions listed per stage")
    ap.add_argument("--out", type=Path, default=None, help="folder for night.prof (default: temporary)")
    args = ap.parse_args()

    t_import = time.perf_counter()
    from darkroom import _threads  # noqa: F401
    from darkroom.facade import Repository
    from darkroom.pipeline.drive import raw_frames_kept
    from darkroom.pipeline.ingest import ingest_paths
    from darkroom.pipeline.run import all_stages
    from darkroom.pipeline.runner import run_stage
    from darkroom.testing import shared_data_dir

    import_s = time.perf_counter() - t_import
    data = shared_data_dir() / "arcsat-xo1b-transit"
    rows = []
    classes_total: dict[str, float] = defaultdict(float)
    whole: pstats.Stats | None = None
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        repo = Repository.init(Path(tmp) / "repo", overrides=[XO1])
        steps = [("ingest", lambda: ingest_paths(repo.registry, [data]))]
        for stage in all_stages(repo.root, repo.config):
            steps.append((stage.name, lambda stage=stage: run_stage(repo.registry, stage)))
        per_stage = []
        # as a serial `darkroom run --ingest` does: the raw frames ingest read, kept for the masters
        # and calibrate
        with raw_frames_kept(repo.config.ingest, serial=True):
            for name, fn in steps:
                prof = cProfile.Profile()
                t0 = time.perf_counter()
                prof.enable()
                fn()
                prof.disable()
                wall = time.perf_counter() - t0
                st = pstats.Stats(prof)
                if whole is None:
                    whole = pstats.Stats(prof)
                else:
                    whole.add(prof)
                cls = breakdown(st)
                for k, v in cls.items():
                    classes_total[k] += v
                top = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[: args.top]  # type: ignore[attr-defined]
                per_stage.append((name, wall, cls, top))
                rows.append(
                    {
                        "stage": name,
                        "wall [s]": wall,
                        **{k: cls.get(k, 0.0) for k in ("FITS I/O", "gzip / zlib", "registry (SQL)")},
                    }
                )
        if whole is not None:
            whole.dump_stats(out / "night.prof")
        repo.close()
    print(f"imports before the first stage: {import_s:.2f} s (profiled runs are ~1.3-2x slower than plain)")
    print_table(rows)
    print("\nown time per cost class over the night [s]:")
    print_table([{"class": k, "seconds": v} for k, v in sorted(classes_total.items(), key=lambda kv: -kv[1])])
    for name, wall, _cls, top in per_stage:
        print(f"\n== {name}: {wall:.2f} s wall; most own time:")
        for (filename, line, func), (_cc, ncalls, tt, ct, _callers) in top:
            short = "/".join(Path(filename).parts[-2:])
            print(f"  {tt:7.3f} s own {ct:7.3f} s cum {ncalls:8d} calls  {func}  ({short}:{line})")


if __name__ == "__main__":
    main()
