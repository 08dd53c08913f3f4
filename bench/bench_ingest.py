"""Ingest benchmark: the ARCSAT night (96 gzipped 1k x 1k FITS + 4 logs).

Prints files/s and MB/s (compressed bytes on disk) for darkroom's ingest, next to
a bare astropy loop that only opens each file and reads its data (the floor any
ingest that checks the pixels must pay).
Run: .venv/bin/python bench/bench_ingest.py [DATA_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from astropy.io import fits

from _common import max_rss_mb, measure, print_table
from darkroom.pipeline.ingest import find_fits_files, ingest_paths
from darkroom.repo.registry import Registry
from darkroom.testing import shared_data_dir


def main() -> None:
    night = Path(sys.argv[1]) if len(sys.argv) > 1 else shared_data_dir() / "arcsat-xo1b-transit"
    files = list(find_fits_files([night], suffixes=(".fits", ".fit", ".fts", ".fz")))
    mb = sum(f.stat().st_size for f in files) / 1e6

    def astropy_floor():
        for f in files:
            with fits.open(f, memmap=False) as h:
                _ = h[0].data.sum()

    def darkroom_ingest():
        with tempfile.TemporaryDirectory() as tmp:
            reg = Registry(f"sqlite:///{tmp}/registry.db")
            reg.upgrade()
            s = ingest_paths(reg, [night])
            reg.dispose()
            return s

    def darkroom_reingest():
        with tempfile.TemporaryDirectory() as tmp:
            reg = Registry(f"sqlite:///{tmp}/registry.db")
            reg.upgrade()
            ingest_paths(reg, [night])
            t = measure(lambda: ingest_paths(reg, [night]))[0]
            reg.dispose()
            return t

    t_floor, m_floor, _ = measure(astropy_floor)
    t_ing, m_ing, summary = measure(darkroom_ingest)
    t_re = darkroom_reingest()
    rows = [
        {
            "stage": "astropy open+read (floor)",
            "files": len(files),
            "MB": mb,
            "seconds": t_floor,
            "files/s": len(files) / t_floor,
            "MB/s": mb / t_floor,
            "peak MB": m_floor,
            "ratio": 1.0,
        },
        {
            "stage": "darkroom ingest",
            "files": len(files),
            "MB": mb,
            "seconds": t_ing,
            "files/s": len(files) / t_ing,
            "MB/s": mb / t_ing,
            "peak MB": m_ing,
            "ratio": t_ing / t_floor,
        },
        {
            "stage": "darkroom re-ingest (no-op)",
            "files": len(files),
            "MB": mb,
            "seconds": t_re,
            "files/s": len(files) / t_re,
            "MB/s": mb / t_re,
            "peak MB": float("nan"),
            "ratio": t_re / t_floor,
        },
    ]
    print(
        f"ingest of {night.name}: {len(summary.registered)} registered, {len(summary.quarantined)} quarantined"
    )
    print_table(rows)
    print(f"max RSS {max_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
