"""Benchmark: resampling and coadding N frames of SIZE x SIZE (default 16 of 4096 x 4096).

Frames: sky noise and cosmic rays on shifted crops (tens of pixels, with their TAN WCS) of one
sky of 3000 Moffat stars (darkroom.sim.render_stars), generated on the fly by a loader so
that only the frames a method keeps are in memory.

Rows:

* ``resample``: darkroom.imaging.resample (bilinear: SCI, VAR and MASK, footprint) against
  ``reproject.reproject_interp`` (bilinear, SCI only, and SCI + VAR as two calls), all N frames.
* ``coadd``: darkroom.imaging.coadd_images (background matched, star flux scaling, ivar
  weights, 3-sigma clipped mean, VAR/WEIGHT/EXPMAP; memory-mapped stack) against
  ``reproject.mosaicking.reproject_and_coadd`` (mean, no clipping) and against
  ``reproject_interp`` of every frame followed by ``ccdproc.combine`` (sigma-clipped average).

Peak memory is tracemalloc's (numpy allocations are traced); the loader's own frame is
included for every method. Ratios are the method's time and memory over darkroom's (above 1:
darkroom is faster / leaner).

    .venv/bin/python bench/bench_coadd.py [--size 4096] [--n 16] [--no-ccdproc] [--ccdproc-size 2048]
        [--darkroom-only]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from darkroom.imaging import CoaddConfig, ImagePlanes, coadd_images, grid_covering, grid_from_centre, resample
from darkroom.sim import render_stars

sys.path.insert(0, str(Path(__file__).parent))
from _common import measure, print_table

RA, DEC, SCALE = 150.0, 2.2, 0.6


_CANVAS: dict[int, np.ndarray] = {}
_MARGIN = 40


def _canvas(size: int) -> np.ndarray:
    """The sky once: 3000 Moffat stars on a (size + 80)^2 canvas; frames are shifted crops of it."""
    if size not in _CANVAS:
        rng = np.random.default_rng(7)
        big = np.zeros((size + 2 * _MARGIN, size + 2 * _MARGIN), np.float32)
        n = 3000
        render_stars(
            big,
            rng.uniform(0, big.shape[1], n),
            rng.uniform(0, big.shape[0], n),
            10 ** rng.uniform(3, 5.5, n),
            3.0,
            oversample=1,
        )
        _CANVAS[size] = big
    return _CANVAS[size]


def _offset(i: int) -> tuple[int, int]:
    rng = np.random.default_rng(100 + i)
    return tuple(int(v) for v in rng.integers(-_MARGIN + 1, _MARGIN - 1, 2))  # type: ignore[return-value]


def frame_grid(i: int, size: int):
    """The WCS of frame i: the canvas's TAN grid seen through the crop at offset (dx, dy)."""
    dx, dy = _offset(i)
    big = grid_from_centre(RA, DEC, pixel_scale_arcsec=SCALE, shape=(size + 2 * _MARGIN,) * 2)
    wcs = big.wcs.deepcopy()
    wcs.wcs.crpix = [wcs.wcs.crpix[0] - (_MARGIN + dx), wcs.wcs.crpix[1] - (_MARGIN + dy)]
    wcs.wcs.set()
    from darkroom.imaging import TargetGrid

    return TargetGrid(wcs, (size, size))


def make_frame(i: int, size: int) -> ImagePlanes:
    dx, dy = _offset(i)
    rng = np.random.default_rng(i)
    sci = rng.standard_normal((size, size), dtype=np.float32)
    sci *= 10.0
    sci += 1000.0
    sci += _canvas(size)[_MARGIN + dy : _MARGIN + dy + size, _MARGIN + dx : _MARGIN + dx + size]
    sci[rng.integers(0, size, 2000), rng.integers(0, size, 2000)] += 3000.0  # cosmic rays
    var = np.full((size, size), 100.0, np.float32)
    grid = frame_grid(i, size)
    return ImagePlanes(sci, var, np.zeros((size, size), np.int32), grid.wcs, name=f"f{i}", exptime_s=60.0)


def run(size: int, n: int, with_ccdproc: bool, ccd_size: int, darkroom_only: bool = False) -> list[dict]:
    import reproject
    from reproject.mosaicking import reproject_and_coadd

    target = grid_covering([(frame_grid(i, size).wcs, (size, size)) for i in range(n)])
    _canvas(size)  # rendered once, outside the timings
    rows = []

    def ours_resample():
        for i in range(n):
            r = resample(make_frame(i, size), target)
            del r

    def rp_sci():
        for i in range(n):
            f = make_frame(i, size)
            reproject.reproject_interp((f.sci, f.wcs), target.wcs, shape_out=target.shape, order="bilinear")

    def rp_sci_var():
        for i in range(n):
            f = make_frame(i, size)
            reproject.reproject_interp((f.sci, f.wcs), target.wcs, shape_out=target.shape, order="bilinear")
            reproject.reproject_interp((f.var, f.wcs), target.wcs, shape_out=target.shape, order="bilinear")

    t_ours, m_ours, _ = measure(ours_resample)
    rows.append(_row("resample", size, n, "darkroom bilinear SCI+VAR+MASK", t_ours, m_ours, t_ours, m_ours))
    if not darkroom_only:
        t, m, _ = measure(rp_sci)
        rows.append(_row("resample", size, n, "reproject_interp SCI", t, m, t_ours, m_ours))
        t, m, _ = measure(rp_sci_var)
        rows.append(_row("resample", size, n, "reproject_interp SCI+VAR", t, m, t_ours, m_ours))

    loaders = [lambda i=i: make_frame(i, size) for i in range(n)]
    t_c, m_c, _ = measure(lambda: coadd_images(loaders, target, CoaddConfig(memory_limit_mb=256)))
    rows.append(_row("coadd", size, n, "darkroom coadd_images (clipped)", t_c, m_c, t_c, m_c))
    if darkroom_only:
        return rows

    def rp_coadd():
        # reproject's own mosaicking takes the inputs as a list: all frames in memory at once
        frames = [make_frame(i, size) for i in range(n)]
        return reproject_and_coadd(
            [(f.sci, f.wcs) for f in frames],
            target.wcs,
            shape_out=target.shape,
            reproject_function=reproject.reproject_interp,
            combine_function="mean",
        )

    t, m, _ = measure(rp_coadd)
    rows.append(_row("coadd", size, n, "reproject_and_coadd (mean)", t, m, t_c, m_c))
    if with_ccdproc:
        if ccd_size != size:
            target_c = grid_covering([(frame_grid(i, ccd_size).wcs, (ccd_size, ccd_size)) for i in range(n)])
            _canvas(ccd_size)
            loaders_c = [lambda i=i: make_frame(i, ccd_size) for i in range(n)]
            t_c, m_c, _ = measure(lambda: coadd_images(loaders_c, target_c, CoaddConfig(memory_limit_mb=256)))
            rows.append(_row("coadd", ccd_size, n, "darkroom coadd_images (clipped)", t_c, m_c, t_c, m_c))
        else:
            target_c = target

        def ccd():
            from astropy.nddata import CCDData
            from ccdproc import combine

            data = []
            for i in range(n):
                f = make_frame(i, ccd_size)
                out = reproject.reproject_interp(
                    (f.sci, f.wcs), target_c.wcs, shape_out=target_c.shape, order="bilinear"
                )
                data.append(CCDData(out[0].astype(np.float32), unit="adu"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return combine(
                    data, method="average", sigma_clip=True, sigma_clip_low_thresh=3, sigma_clip_high_thresh=3
                )

        t, m, _ = measure(ccd)
        rows.append(_row("coadd", ccd_size, n, "reproject_interp + ccdproc.combine", t, m, t_c, m_c))
    return rows


def _row(stage, size, n, method, seconds, peak_mb, t_ref, m_ref) -> dict:
    row = {
        "stage": stage,
        "size": f"{n} x {size}^2",
        "method": method,
        "seconds": seconds,
        "peak_MB": peak_mb,
        "time/darkroom": seconds / t_ref,
        "memory/darkroom": peak_mb / m_ref,
    }
    # printed as soon as measured: a full-size run takes tens of minutes and may be stopped
    print(
        f"{row['stage']:8s}  {row['size']:14s}  {method:36s}  {seconds:8.1f} s  {peak_mb:8.0f} MB"
        f"  time/darkroom {row['time/darkroom']:.2f}  memory/darkroom {row['memory/darkroom']:.2f}",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--no-ccdproc", action="store_true")
    ap.add_argument("--ccdproc-size", type=int, default=None, help="frame size for the ccdproc row (memory)")
    ap.add_argument("--darkroom-only", action="store_true", help="only darkroom's rows (after a change)")
    args = ap.parse_args()
    print(
        f"{args.n} frames of {args.size}^2 (ccdproc rows at {args.ccdproc_size or args.size}^2)", flush=True
    )
    rows = run(args.size, args.n, not args.no_ccdproc, args.ccdproc_size or args.size, args.darkroom_only)
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
