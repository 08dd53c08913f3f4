"""Benchmark of darkroom.detect (background, detection, measurements) against sep and photutils.

Synthetic table: a float32 frame (``--size``, default 1024 x 1024) with ``--stars`` (default 25)
pixel-integrated Gaussian stars (FWHM 3 px) on a sloped sky with Gaussian noise; ``--size 4096
--stars 3000`` is the crowded case.

ARCSAT table (``--night``, default on when ../shared/data is there): the extract stage per 1k x 1k
calibrated frame of the XO-1b night (~25 stars; the night is ingested and calibrated first, not
timed), step by step: read SCI + MASK, the bad and saturated pixels of both steps (pixel_masks),
background, detection and measurements, image quality, catalogue written to Parquet, and the whole
stage unit; median over ``--frames`` frames.

Rows (ratio = library time / darkroom time: above 1 darkroom is faster, below 1 it costs more):
  sep background        sep.Background + back() + rms(): the reference of darkroom's background
  darkroom background   estimate_background (mask bits, NaN handling, the maps) by
                        darkroom.skymesh's compiled estimator (sep's maps bit for bit)
  sep extract           sep.extract with the same filter, threshold and error map
  detection in boxes    (ARCSAT) the sources of sep.extract as detect_sources finds them: sep run
                        in boxes around the cells that can pass the threshold (darkroom.sepboxes;
                        the same sources), ratio to sep extract on the whole frame
  darkroom detect       detect_sources: sep.extract plus windowed centroids, half-light radii,
                        Moffat PSF fits of the brightest stars, windowed shapes, aperture fluxes,
                        saturation
  darkroom PSF fit      (ARCSAT) the Moffat PSF fits alone (detect.psf.measure_psf, part of
                        darkroom detect), on the inputs detect_sources gave it for the frame
  darkroom total        extract_frame: the two above plus the image-quality figures
  catalogue write/read  darkroom.io.tables against astropy's Table.write / Table.read (Parquet)
  photutils ...         Background2D, segmentation + SourceCatalog, DAOStarFinder (synthetic only;
                        ratio = photutils / darkroom)
Seconds are CPU seconds (``time.process_time``: the machine is shared and CPU time is steadier
than wall time), the best of ``--repeat`` (synthetic) or the median over the frames (ARCSAT);
peak MB is what tracemalloc sees in one more run (numpy and Python; sep's C buffers are not
traced). The load average is printed.

Run: .venv/bin/python bench/bench_detect.py [--size 1024] [--stars 25] [--repeat 5] [--frames 20]
     [--no-night] [--night-only] [--no-photutils]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import erf

from darkroom.detect import BackgroundConfig, DetectConfig, detect_sources, estimate_background, extract_frame
from darkroom.detect.background import pixel_masks
from darkroom.detect.extract import _kernel
from darkroom.detect.psf import measure_psf
from darkroom.detect.quality import measure_image_quality

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table

XO1 = "targets=[{name: XO-1, ra_deg: 240.549333, dec_deg: 28.169556}]"


def synthetic_frame(size: int, n_stars: int, *, fwhm: float = 3.0, seed: int = 0) -> np.ndarray:
    """float32 (size, size) frame: pixel-integrated Gaussian stars, sloped sky 1000-1100 adu, noise 10 adu."""
    rng = np.random.default_rng(seed)
    image = np.broadcast_to((1000.0 + 100.0 * np.arange(size) / size).astype(np.float32), (size, size)).copy()
    x = rng.uniform(5, size - 6, n_stars)
    y = rng.uniform(5, size - 6, n_stars)
    flux = 10 ** rng.uniform(3.0, 5.5, n_stars)
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    half = int(5 * sigma) + 1
    offs = np.arange(-half, half + 1)
    for xi, yi, fi in zip(x, y, flux, strict=True):
        gx = int(xi) + offs
        gy = int(yi) + offs
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


def cpu(fn: Callable[[], Any], repeat: int = 1, *, peak: bool = True) -> tuple[float, float, Any]:
    """Best CPU time [s] over ``repeat`` untraced runs, the traced peak memory [MB] of one more run
    (``peak``; tracemalloc slows numpy-heavy code several times, so it never overlaps a timing), and
    the last result."""
    best = math.inf
    result = None
    for _ in range(repeat):
        t0 = time.process_time()
        result = fn()
        best = min(best, time.process_time() - t0)
    peak_mb = math.nan
    if peak:
        tracemalloc.start()
        fn()
        peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    return best, peak_mb, result


def _sep_background(image: np.ndarray, mask: np.ndarray | None = None):
    import sep

    bkg = sep.Background(image, mask=mask, bw=64, bh=64, fw=3, fh=3)
    return bkg.back(dtype=np.float32), bkg.rms(dtype=np.float32)


def _sep_extract(image: np.ndarray, level: np.ndarray, rms: np.ndarray, config: DetectConfig, mask=None):
    import sep

    return sep.extract(
        image - level,
        config.threshold_sigma,
        err=rms,
        mask=mask,
        minarea=config.min_area_pix,
        filter_kernel=_kernel(config),
        filter_type="conv",
        deblend_nthresh=config.deblend_n_thresh,
        deblend_cont=config.deblend_cont,
    )


def _io_rows(catalog, size: str, repeat: int, tmp: Path, *, ratio_of: Callable[[float, float], str]):
    """Catalogue write + read through darkroom.io.tables against astropy's Parquet I/O."""
    from astropy.table import Table

    from darkroom.io.tables import read_parquet, write_parquet

    path = tmp / "cat.parquet"
    t_ours, m_ours, _ = cpu(lambda: (write_parquet(catalog, path), read_parquet(path)), repeat)
    # no traced run of astropy's reader: it reads through pyarrow's dataset API, whose threads
    # release Python buffers after it returns, and CPython 3.11's tracemalloc crashes the process
    # when such a thread makes its Python thread state (pyarrow 22: a segmentation fault)
    t_astropy, m_astropy, _ = cpu(
        lambda: (catalog.write(path, format="parquet", overwrite=True), Table.read(path)), repeat, peak=False
    )
    return [
        {
            "stage": "astropy write+read",
            "size": size,
            "seconds": t_astropy,
            "peak MB": m_astropy,
            "ratio": "",
        },
        {
            "stage": "catalogue write+read",
            "size": size,
            "seconds": t_ours,
            "peak MB": m_ours,
            "ratio": ratio_of(t_astropy, t_ours) + " (astropy)",
        },
    ]


def synthetic_table(args: argparse.Namespace) -> list[dict]:
    image = synthetic_frame(args.size, args.stars)
    size = f"{args.size}x{args.size}"
    bconf = BackgroundConfig(box_size_pix=64, filter_size=3)
    dconf = DetectConfig(threshold_sigma=3.0, filter_fwhm_pix=3.0)
    r = args.repeat

    def ratio(lib: float, ours: float) -> str:
        return f"{lib / ours:.2f}"

    t_sb, m_sb, (level, rms) = cpu(lambda: _sep_background(image), r)
    t_bkg, m_bkg, bkg = cpu(lambda: estimate_background(image, config=bconf), r)
    t_se, m_se, objs = cpu(lambda: _sep_extract(image, level, rms, dconf), r)
    t_det, m_det, cat = cpu(lambda: detect_sources(image, background=bkg, config=dconf), r)
    t_all, m_all, ext = cpu(lambda: extract_frame(image, background_config=bconf, detect_config=dconf), r)
    rows = [
        {"stage": "sep background", "size": size, "seconds": t_sb, "peak MB": m_sb, "ratio": ""},
        {
            "stage": "darkroom background",
            "size": size,
            "seconds": t_bkg,
            "peak MB": m_bkg,
            "ratio": ratio(t_sb, t_bkg) + " (sep)",
        },
        {
            "stage": f"sep extract ({len(objs)} src)",
            "size": size,
            "seconds": t_se,
            "peak MB": m_se,
            "ratio": "",
        },
        {
            "stage": f"darkroom detect ({len(cat)} src)",
            "size": size,
            "seconds": t_det,
            "peak MB": m_det,
            "ratio": ratio(t_se, t_det) + " (sep)",
        },
        {
            "stage": "darkroom total",
            "size": size,
            "seconds": t_all,
            "peak MB": m_all,
            "ratio": ratio(t_sb + t_se, t_all) + " (sep)",
        },
    ]
    with tempfile.TemporaryDirectory() as tmp:
        rows += _io_rows(ext.catalog, f"{len(cat)} rows", r, Path(tmp), ratio_of=ratio)

    if not args.no_photutils:
        from astropy.convolution import convolve
        from photutils.background import Background2D, MedianBackground
        from photutils.detection import DAOStarFinder
        from photutils.segmentation import SourceCatalog, make_2dgaussian_kernel
        from photutils.segmentation import detect_sources as segment_sources

        t_pb, m_pb, pbkg = cpu(
            lambda: Background2D(image, (64, 64), filter_size=(3, 3), bkg_estimator=MedianBackground()), r
        )
        rows.append(
            {
                "stage": "photutils background",
                "size": size,
                "seconds": t_pb,
                "peak MB": m_pb,
                "ratio": ratio(t_pb, t_bkg) + " (photutils/darkroom)",
            }
        )
        sub = image - pbkg.background
        threshold = 3.0 * pbkg.background_rms

        def segm():
            kernel = make_2dgaussian_kernel(3.0, size=7)
            conv = convolve(sub, kernel)
            seg = segment_sources(conv, threshold, npixels=5)
            scat = SourceCatalog(sub, seg, convolved_data=conv)
            return scat.to_table(columns=["label", "xcentroid", "ycentroid", "fwhm", "segment_flux"])

        t_ps, m_ps, stab = cpu(segm, r)
        rows.append(
            {
                "stage": f"photutils segm ({len(stab)} src)",
                "size": size,
                "seconds": t_ps,
                "peak MB": m_ps,
                "ratio": ratio(t_ps, t_det) + " (photutils/darkroom)",
            }
        )
        finder = DAOStarFinder(threshold=3.0 * float(np.median(pbkg.background_rms)), fwhm=3.0)
        t_pd, m_pd, dtab = cpu(lambda: finder(sub), r)
        rows.append(
            {
                "stage": f"photutils daofind ({0 if dtab is None else len(dtab)} src)",
                "size": size,
                "seconds": t_pd,
                "peak MB": m_pd,
                "ratio": ratio(t_pd, t_det) + " (photutils/darkroom)",
            }
        )
    q = ext.quality
    print(
        f"image quality: FWHM {q.fwhm_pix:.2f} px (input 3.0 px Gaussian), sky {q.sky_adu:.1f} adu, "
        f"rms {q.sky_rms_adu:.2f} adu (input 10), {q.n_sources} sources"
    )
    return rows


def _calibrated_night(base: Path):
    """The ARCSAT night ingested and calibrated in a temporary repository (not timed)."""
    from darkroom.facade import Repository
    from darkroom.pipeline.ingest import ingest_paths
    from darkroom.pipeline.run import all_stages
    from darkroom.pipeline.runner import run_stage
    from darkroom.testing import shared_data_dir

    repo = Repository.init(base / "repo", overrides=[XO1])
    ingest_paths(repo.registry, [shared_data_dir() / "arcsat-xo1b-transit"])
    stages = all_stages(repo.root, repo.config)
    for stage in stages:
        if stage.name == "extract":
            return repo, stage
        run_stage(repo.registry, stage)
    raise RuntimeError("no extract stage")


def night_table(args: argparse.Namespace) -> list[dict]:
    from darkroom.io.calibrated import read_calibrated

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo, stage = _calibrated_night(Path(tmp))
        with repo.registry.session() as s:
            units = stage.plan(s)[: args.frames]
        cfg = stage.config
        steps: dict[str, list[float]] = {}
        peaks: dict[str, float] = {}
        lib: dict[str, list[float]] = {"sep background": [], "sep extract": []}

        def step(name: str, fn: Callable[[], Any]) -> Any:
            t, m, out = cpu(fn, peak=name not in peaks)  # the peak of the first frame
            steps.setdefault(name, []).append(t)
            peaks.setdefault(name, m)
            return out

        # measure_psf's inputs, as detect_sources passes them, to time the PSF fits alone
        import darkroom.detect.extract as extract_module

        psf_inputs: list[tuple[tuple, dict]] = []

        def capture(*a: Any, **k: Any) -> Any:
            psf_inputs.append((a, k))
            return measure_psf(*a, **k)

        n_src = []
        for unit in units:
            path = repo.root / unit.payload["path"]
            image = step("read SCI+MASK", lambda path=path: read_calibrated(path, planes=("SCI", "MASK")))
            masks = step(
                "pixel masks",
                lambda image=image: pixel_masks(
                    image.sci, image.mask, cfg.background.mask_bits, cfg.detect.mask_bits
                ),
            )
            bkg = step(
                "darkroom background",
                lambda image=image, masks=masks: estimate_background(
                    image.sci, config=cfg.background, masks=masks
                ),
            )
            cat = step(
                "darkroom detect",
                lambda image=image, bkg=bkg, masks=masks: detect_sources(
                    image.sci, background=bkg, config=cfg.detect, masks=masks
                ),
            )
            extract_module.measure_psf = capture
            try:
                detect_sources(image.sci, background=bkg, config=cfg.detect, masks=masks)
            finally:
                extract_module.measure_psf = measure_psf
            if psf_inputs:  # (none without sources)
                a, k = psf_inputs.pop()
                step("darkroom PSF fit", lambda a=a, k=k: measure_psf(*a, **k))
            n_src.append(len(cat))
            step(
                "image quality", lambda cat=cat, bkg=bkg: measure_image_quality(cat, bkg, config=cfg.quality)
            )
            step("extract stage unit", lambda unit=unit: stage.run(unit))
            # the library alone on the same frame and mask
            bad = masks.background
            arr = image.sci if bad is None else np.where(bad, np.float32(0), image.sci)
            t, _, (level, rms) = cpu(lambda arr=arr, bad=bad: _sep_background(arr, bad), peak=False)
            lib["sep background"].append(t)
            t, _, _ = cpu(
                lambda arr=arr, level=level, rms=rms, bad=bad: _sep_extract(arr, level, rms, cfg.detect, bad)
            )
            lib["sep extract"].append(t)
            sub = np.ascontiguousarray(arr - level, dtype=np.float32)
            if bad is not None:
                sub[bad] = 0.0
            step(
                "detection in boxes",
                lambda sub=sub, rms=rms, bad=bad, sat=masks.saturated: extract_module._sep_sources(
                    sub, rms, bad, sat, cfg.detect
                ),
            )
        size = f"1024x1024, {statistics.median(n_src):.0f} src"
        med = {k: statistics.median(v) for k, v in steps.items()}
        lmed = {k: statistics.median(v) for k, v in lib.items()}
        for name in (
            "read SCI+MASK",
            "pixel masks",
            "darkroom background",
            "detection in boxes",
            "darkroom detect",
            "darkroom PSF fit",
            "image quality",
            "extract stage unit",
        ):
            if name not in med:
                continue
            ratio = ""
            if name == "darkroom background":
                ratio = f"{lmed['sep background'] / med[name]:.2f} (sep)"
            elif name in ("darkroom detect", "detection in boxes"):
                ratio = f"{lmed['sep extract'] / med[name]:.2f} (sep)"
            elif name == "extract stage unit":
                ratio = f"{(lmed['sep background'] + lmed['sep extract']) / med[name]:.2f} (sep)"
            if name in ("darkroom background", "detection in boxes"):
                lib_name = "sep background" if name == "darkroom background" else "sep extract"
                rows.append(
                    {"stage": lib_name, "size": size, "seconds": lmed[lib_name], "peak MB": "", "ratio": ""}
                )
            rows.append(
                {"stage": name, "size": size, "seconds": med[name], "peak MB": peaks[name], "ratio": ratio}
            )
        catalog = detect_sources(image.sci, background=bkg, mask=image.mask, config=cfg.detect)
        rows += _io_rows(catalog, f"{len(catalog)} rows", 5, Path(tmp), ratio_of=lambda a, b: f"{a / b:.2f}")
        repo.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--stars", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--frames", type=int, default=20, help="ARCSAT frames timed")
    parser.add_argument("--no-photutils", action="store_true", help="no photutils rows")
    parser.add_argument("--no-night", action="store_true", help="synthetic table only")
    parser.add_argument("--night-only", action="store_true", help="ARCSAT table only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(
        f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs; CPU seconds"
    )
    if not args.night_only:
        print(f"\nsynthetic frame ({args.stars} Gaussian stars), best of {args.repeat}:")
        print_table(synthetic_table(args))
    from darkroom.testing import shared_data_dir

    if not args.no_night and (shared_data_dir() / "arcsat-xo1b-transit").is_dir():
        print(f"\nARCSAT XO-1b night, extract stage per frame (median of {args.frames} frames):")
        print_table(night_table(args))


if __name__ == "__main__":
    main()
