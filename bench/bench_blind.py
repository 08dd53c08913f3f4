"""Benchmark of blind solving (darkroom.astrom.blind) and of the Bayer luminance read.

Rows:
  blind, fitting indexes   solve-field on the Feder thumbnail's source list (256 x 256, 9"/px)
                           with only the Tycho-2 index files whose quads fit the field
  blind, all indexes       the same with every installed index file (what a bare solve-field
                           configuration does); ratio = this / the row above
  blind, no scale hint     fitting indexes unknown: all indexes, scales 0.1-1000 "/px
  bayer, luminance         read_raw of a 2000 x 3000 RGGB frame summed 2 x 2 (io.bayer)
  bayer, plain read        read_raw of the same file with debayer=False; ratio = bayer / plain

Run: .venv/bin/python bench/bench_blind.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

from _common import measure, print_table
from darkroom.astrom.blind import index_files, solve_with_solve_field
from darkroom.detect import extract_frame
from darkroom.io.rawfits import read_raw
from darkroom.testing import shared_data_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    path = shared_data_dir() / "feder-eyuma-astrometry-photcal" / "thumbnail-image.fit.gz"
    with gzip.open(path) as fh, fits.open(fh) as hdul:
        data = np.asarray(hdul[0].data, np.float32)
    cat = extract_frame(data).catalog
    x, y, f = (np.asarray(cat[c], float) for c in ("x", "y", "flux_aper_adu"))
    fitting = solve_with_solve_field(x, y, f, shape=data.shape, pixel_scale_arcsec=9.0)
    t_fit, m_fit, _ = measure(
        lambda: solve_with_solve_field(x, y, f, shape=data.shape, pixel_scale_arcsec=9.0), repeat=args.repeat
    )
    rows.append(
        {
            "stage": "blind, fitting indexes",
            "size": f"{len(x)} src",
            "seconds": t_fit,
            "peak MB": m_fit,
            "ratio": 1.0,
            "note": fitting.method,
        }
    )
    import darkroom.astrom.blind as blind

    chosen = blind.indexes_for_field
    blind.indexes_for_field = lambda indexes, **_: list(indexes)  # every installed index file
    try:
        t_all, m_all, _ = measure(
            lambda: solve_with_solve_field(x, y, f, shape=data.shape, pixel_scale_arcsec=9.0),
            repeat=args.repeat,
        )
    finally:
        blind.indexes_for_field = chosen
    rows.append(
        {
            "stage": "blind, all indexes",
            "size": f"{len(index_files())} index",
            "seconds": t_all,
            "peak MB": m_all,
            "ratio": t_all / t_fit,
            "note": "",
        }
    )
    t_no, m_no, _ = measure(lambda: solve_with_solve_field(x, y, f, shape=data.shape), repeat=1)
    rows.append(
        {
            "stage": "blind, no scale hint",
            "size": f"{len(x)} src",
            "seconds": t_no,
            "peak MB": m_no,
            "ratio": t_no / t_fit,
            "note": "",
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        raw = np.random.default_rng(1).integers(200, 4000, (2000, 3000)).astype(np.uint16)
        h = fits.Header()
        h["BAYERPAT"] = "RGGB"
        p = Path(tmp) / "dslr.fits"
        fits.PrimaryHDU(raw, header=h).writeto(p)
        t_b, m_b, _ = measure(lambda: read_raw(p), repeat=args.repeat)
        t_p, m_p, _ = measure(lambda: read_raw(p, debayer=False), repeat=args.repeat)
    rows.append(
        {
            "stage": "bayer, luminance",
            "size": "3000x2000",
            "seconds": t_b,
            "peak MB": m_b,
            "ratio": t_b / t_p,
            "note": "",
        }
    )
    rows.append(
        {
            "stage": "bayer, plain read",
            "size": "3000x2000",
            "seconds": t_p,
            "peak MB": m_p,
            "ratio": 1.0,
            "note": "",
        }
    )
    print_table(rows)


if __name__ == "__main__":
    main()
