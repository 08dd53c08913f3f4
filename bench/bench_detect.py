"""Benchmark of darkroom.detect (background + detection + measurements) against photutils.

A synthetic float32 frame (default 4096 x 4096) with ~3000 Gaussian stars (FWHM 3 px)
on a sloped sky with Gaussian noise.

Rows:
  darkroom background   estimate_background (sep, 64-px mesh, 3x3 filter)
  darkroom detect       detect_sources: matched filter, extraction, windowed centroids,
                        half-light radii, windowed shapes, aperture fluxes, saturation
  darkroom total        extract_frame: the two above plus the image-quality figures
  photutils background  Background2D(box 64, filter 3, MedianBackground)
  photutils segm        detect_sources (3 sigma, npixels 5, Gaussian-convolved) + SourceCatalog
                        centroids/fwhm (the nearest equivalent of the darkroom rows)
  photutils daofind     DAOStarFinder(3 sigma, fwhm 3) on the background-subtracted image
The ratio is photutils time / darkroom time (background vs background, detection vs
detection). Peak memory is what tracemalloc sees (numpy and Python; sep's C buffers are
not traced).

Run: .venv/bin/python bench/bench_detect.py [--size 4096] [--stars 3000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import math
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from scipy.special import erf

from darkroom.detect import BackgroundConfig, DetectConfig, detect_sources, estimate_background, extract_frame


def synthetic_frame(size: int, n_stars: int, *, fwhm: float = 3.0, seed: int = 0):
    """float32 (size, size) frame: pixel-integrated Gaussian stars, sloped sky 1000-1100 adu, noise 10 adu."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    image = (1000.0 + 100.0 * xx / size).astype(np.float32)
    del yy, xx
    x = rng.uniform(5, size - 6, n_stars)
    y = rng.uniform(5, size - 6, n_stars)
    flux = 10 ** rng.uniform(3.0, 5.5, n_stars)
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    half = int(5 * sigma) + 1
    offs = np.arange(-half, half + 1)
    for xi, yi, fi in zip(x, y, flux, strict=True):
        ix, iy = int(xi), int(yi)
        gx = ix + offs
        gy = iy + offs
        px = 0.5 * (
            erf((gx + 0.5 - xi) / (math.sqrt(2) * sigma)) - erf((gx - 0.5 - xi) / (math.sqrt(2) * sigma))
        )
        py = 0.5 * (
            erf((gy + 0.5 - yi) / (math.sqrt(2) * sigma)) - erf((gy - 0.5 - yi) / (math.sqrt(2) * sigma))
        )
        x0, x1 = max(0, gx[0]), min(size, gx[-1] + 1)
        y0, y1 = max(0, gy[0]), min(size, gy[-1] + 1)
        stamp = fi * np.outer(py, px)
        image[y0:y1, x0:x1] += stamp[y0 - gy[0] : y1 - gy[0], x0 - gx[0] : x1 - gx[0]].astype(np.float32)
    image += rng.normal(0.0, 10.0, image.shape).astype(np.float32)
    return image


def measure(fn: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    """Best wall time [s] over ``repeat`` runs, traced peak memory [MB] of the first run, last result."""
    best = math.inf
    peak_mb = math.nan
    result = None
    for i in range(repeat):
        if i == 0:
            tracemalloc.start()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
        if i == 0:
            peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
    return best, peak_mb, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--stars", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-photutils", action="store_true", help="darkroom rows only")
    args = parser.parse_args()

    image = synthetic_frame(args.size, args.stars)
    size = f"{args.size}x{args.size}"
    bconf = BackgroundConfig(box_size_pix=64, filter_size=3)
    dconf = DetectConfig(threshold_sigma=3.0, filter_fwhm_pix=3.0)
    rows = []

    t_bkg, m_bkg, bkg = measure(lambda: estimate_background(image, config=bconf), args.repeat)
    t_det, m_det, cat = measure(lambda: detect_sources(image, background=bkg, config=dconf), args.repeat)
    t_all, m_all, ext = measure(
        lambda: extract_frame(image, background_config=bconf, detect_config=dconf), args.repeat
    )
    rows.append(("darkroom background", size, t_bkg, m_bkg, ""))
    rows.append((f"darkroom detect ({len(cat)} src)", size, t_det, m_det, ""))
    rows.append(("darkroom total", size, t_all, m_all, ""))

    if not args.no_photutils:
        from astropy.convolution import convolve
        from photutils.background import Background2D, MedianBackground
        from photutils.detection import DAOStarFinder
        from photutils.segmentation import SourceCatalog, make_2dgaussian_kernel
        from photutils.segmentation import detect_sources as segment_sources

        t_pb, m_pb, pbkg = measure(
            lambda: Background2D(image, (64, 64), filter_size=(3, 3), bkg_estimator=MedianBackground()),
            args.repeat,
        )
        rows.append(("photutils background", size, t_pb, m_pb, t_pb / t_bkg))
        sub = image - pbkg.background
        threshold = 3.0 * pbkg.background_rms

        def segm():
            kernel = make_2dgaussian_kernel(3.0, size=7)
            conv = convolve(sub, kernel)
            seg = segment_sources(conv, threshold, npixels=5)
            scat = SourceCatalog(sub, seg, convolved_data=conv)
            return scat.to_table(columns=["label", "xcentroid", "ycentroid", "fwhm", "segment_flux"])

        t_ps, m_ps, stab = measure(segm, args.repeat)
        rows.append((f"photutils segm ({len(stab)} src)", size, t_ps, m_ps, t_ps / t_det))
        finder = DAOStarFinder(threshold=3.0 * float(np.median(pbkg.background_rms)), fwhm=3.0)
        t_pd, m_pd, dtab = measure(lambda: finder(sub), args.repeat)
        rows.append(
            (f"photutils daofind ({0 if dtab is None else len(dtab)} src)", size, t_pd, m_pd, t_pd / t_det)
        )

    header = ("stage", "size", "seconds", "peak MB", "ratio (photutils/darkroom)")
    widths = [max(len(header[0]), *(len(r[0]) for r in rows)), 11, 8, 8, 26]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for name, sz, sec, mb, ratio in rows:
        ratio_s = f"{ratio:.1f}x" if ratio != "" else ""
        print(f"{name:<{widths[0]}}  {sz:<11}  {sec:8.3f}  {mb:8.0f}  {ratio_s}")
    q = ext.quality
    print(
        f"\nimage quality: FWHM {q.fwhm_pix:.2f} px (input 3.0 px Gaussian), ellipticity {q.ellipticity:.3f}, "
        f"sky {q.sky_adu:.1f} adu, rms {q.sky_rms_adu:.2f} adu (input 10), {q.n_sources} sources"
    )


if __name__ == "__main__":
    main()
