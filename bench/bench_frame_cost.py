"""Per-frame cost against frame size and source count: extraction, and calibration with the
cosmic-ray step and its star guard.

Frames are rectangles (ny, nx) from the tiny 500 x 650 of a small robotic telescope to
4096 x 4096, with a source density per pixel that gives ~1300 sources on the tiny frame
(FWHM 2 px, sloped sky, Gaussian noise, 0.5 % of the pixels hit by cosmic rays for the
calibration rows).

Rows:
  extract_frame      darkroom.detect.extract_frame (background, detection, measurements, quality)
  sep                sep.Background + sep.extract at 1.5 sigma, the library under it (ratio =
                     extract_frame / sep: what darkroom's measurements cost on top)
  calibrate          darkroom.calib.calibrate_frame, no masters, cosmic rays with the star guard
  calibrate, no guard  the same without the star guard (ratio = with / without)
Columns: stage, size, n_sources (made), seconds (best of --repeat), peak MB (tracemalloc),
us per source, ratio.

Run: .venv/bin/python bench/bench_frame_cost.py [--repeat 2] [--sizes 500x650,1024x1024,2048x2048]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from scipy.special import erf

from darkroom.calib.process import CalibrationConfig, calibrate_frame
from darkroom.calib.starguard import StarGuardConfig
from darkroom.detect import extract_frame
from darkroom.instruments.metadata import FrameMetadata

sys.path.insert(0, str(Path(__file__).parent))
from _common import measure, print_table

DENSITY = 1300 / (500 * 650)  # sources per pixel of the tiny frame


def synthetic(ny: int, nx: int, n_stars: int, *, fwhm: float = 2.0, seed: int = 0) -> np.ndarray:
    """float32 raw-like frame [adu]: bias 100, sky 400-450, pixel-integrated Gaussian stars."""
    rng = np.random.default_rng(seed)
    image = np.empty((ny, nx), np.float32)
    image[:] = 500.0 + 50.0 * np.arange(nx, dtype=np.float32)[None, :] / nx
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    half = int(5 * sigma) + 1
    offs = np.arange(-half, half + 1)
    for xi, yi, fi in zip(
        rng.uniform(3, nx - 4, n_stars),
        rng.uniform(3, ny - 4, n_stars),
        10 ** rng.uniform(2.5, 4.8, n_stars),
        strict=True,
    ):
        gx, gy = int(xi) + offs, int(yi) + offs
        px = 0.5 * (
            erf((gx + 0.5 - xi) / (math.sqrt(2) * sigma)) - erf((gx - 0.5 - xi) / (math.sqrt(2) * sigma))
        )
        py = 0.5 * (
            erf((gy + 0.5 - yi) / (math.sqrt(2) * sigma)) - erf((gy - 0.5 - yi) / (math.sqrt(2) * sigma))
        )
        x0, x1, y0, y1 = max(0, gx[0]), min(nx, gx[-1] + 1), max(0, gy[0]), min(ny, gy[-1] + 1)
        stamp = fi * np.outer(py, px)
        image[y0:y1, x0:x1] += stamp[y0 - gy[0] : y1 - gy[0], x0 - gx[0] : x1 - gx[0]].astype(np.float32)
    image = rng.poisson(np.clip(image, 0, None)).astype(np.float32) + rng.normal(0, 5, image.shape).astype(
        np.float32
    )
    hits = rng.integers(0, image.size, image.size // 200)
    image.ravel()[hits] += rng.uniform(200, 3000, hits.size).astype(np.float32)
    return np.minimum(image, 4095.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--sizes", default="500x650,1024x1024,2048x2048")
    ap.add_argument("--densities", default="0.25,1,4", help="source densities relative to the tiny frame's")
    args = ap.parse_args()
    import sep

    no_guard = CalibrationConfig(star_guard=StarGuardConfig(enabled=False))
    rows = []
    for size in args.sizes.split(","):
        ny, nx = (int(v) for v in size.split("x"))
        for rel in (float(d) for d in args.densities.split(",")):
            n = int(DENSITY * rel * ny * nx)
            img = synthetic(ny, nx, n)
            meta = FrameMetadata(
                profile="bench",
                frame_type="light",
                exptime_s=30.0,
                naxis1=nx,
                naxis2=ny,
                gain_e_per_adu=1.0,
                read_noise_e=5.0,
                saturation_adu=4095.0,
            )
            t_ext, m_ext, cat = measure(
                lambda img=img: extract_frame(img, saturation_adu=4095.0), repeat=args.repeat
            )

            def plain(img=img):
                bkg = sep.Background(img)
                return sep.extract(img - bkg.back(), 1.5, err=bkg.globalrms, minarea=3)

            t_sep, m_sep, _ = measure(plain, repeat=args.repeat)
            n_found = len(cat.catalog) if hasattr(cat, "catalog") else n
            t_cal, m_cal, _ = measure(
                lambda img=img, meta=meta: calibrate_frame(img, meta), repeat=args.repeat
            )
            t_cal0, m_cal0, _ = measure(
                lambda img=img, meta=meta: calibrate_frame(img, meta, config=no_guard), repeat=args.repeat
            )
            label = f"{ny}x{nx}"
            rows += [
                {
                    "stage": "extract_frame",
                    "size": label,
                    "n_sources": n_found,
                    "seconds": t_ext,
                    "peak_MB": m_ext,
                    "us_per_source": 1e6 * t_ext / max(n_found, 1),
                    "ratio": t_ext / t_sep,
                },
                {
                    "stage": "sep",
                    "size": label,
                    "n_sources": n_found,
                    "seconds": t_sep,
                    "peak_MB": m_sep,
                    "us_per_source": 1e6 * t_sep / max(n_found, 1),
                    "ratio": 1.0,
                },
                {
                    "stage": "calibrate",
                    "size": label,
                    "n_sources": n_found,
                    "seconds": t_cal,
                    "peak_MB": m_cal,
                    "us_per_source": 1e6 * t_cal / max(n_found, 1),
                    "ratio": t_cal / t_cal0,
                },
                {
                    "stage": "calibrate, no guard",
                    "size": label,
                    "n_sources": n_found,
                    "seconds": t_cal0,
                    "peak_MB": m_cal0,
                    "us_per_source": 1e6 * t_cal0 / max(n_found, 1),
                    "ratio": 1.0,
                },
            ]
        print(flush=True)
        print_table(rows[-4 * len(args.densities.split(",")) :])
    print("\nall rows:")
    print_table(rows)


if __name__ == "__main__":
    main()
