"""Benchmark of darkroom.astrom: solving a 1k x 1k frame with a hint, and relative alignment.

The frames are darkroom.sim frames (1024 x 1024, 0.67 arcsec/px, TAN-SIP distortion of
4 px at the corners, ~220 detected sources, a catalog of ~800 stars); sources are
detected once, the solver is timed on the source list (detection is bench_detect.py's).

Rows:
  solve, hint             solve_frame with a hint 0.12 deg off and a 3 % scale error
  solve, wide hint        solve_with_hint, hint 1.2 deg off, 1.5 deg search radius, 2.6 deg
                          catalog (~100k stars)
  solve, header refine    solve_frame with a header WCS 2 px off, no SIP
  align, darkroom         align_sources (asterisms + affine fit) of two frames
  align, astroalign       astroalign.find_transform on the same source lists (the library
                          darkroom's own matcher replaces)
  fit, darkroom           fit_tan_sip, order 3, on the solution's matched pairs
  fit, astropy            astropy.wcs.utils.fit_wcs_from_points(sip_degree=3) on the same pairs
  series (--arcsat)       solve_frame_series of the 80 ARCSAT frames (detections cached first)
The ratio is library time / darkroom time for the matching row. Accuracy columns are
measured against the simulator's truth WCS (rms over a 20 x 20 pixel grid).

Run: .venv/bin/python bench/bench_solve.py [--repeat 5] [--arcsat]
"""

from __future__ import annotations

import argparse
import math
import time
import tracemalloc
import warnings
from collections.abc import Callable

import numpy as np
from astropy.table import Table, vstack
from astropy.wcs import WCS

from darkroom.astrom import (
    FrameSources,
    PointingHint,
    SolveConfig,
    align_sources,
    fit_tan_sip,
    from_tangent_plane,
    solve_frame,
    solve_frame_series,
    solve_with_hint,
    to_tangent_plane,
)
from darkroom.catalogs import CatalogColumns, standardize_catalog
from darkroom.detect import DetectConfig, extract_frame
from darkroom.sim import SimConfig, build_scene, truth_image


def measure(fn: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    """Median wall time [s] over ``repeat`` runs, traced peak memory [MB] of the first, last result."""
    times = []
    peak_mb = math.nan
    result = None
    for i in range(repeat):
        if i == 0:
            tracemalloc.start()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        if i == 0:
            peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
    return float(np.median(times)), peak_mb, result


def grid_rms_pix(wcs: WCS, truth: WCS, shape) -> float:
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 20), np.linspace(0, ny - 1, 20))
    px, py = truth.all_world2pix(*wcs.all_pix2world(gx.ravel(), gy.ravel(), 0), 0)
    return float(np.sqrt(np.mean((px - gx.ravel()) ** 2 + (py - gy.ravel()) ** 2)))


def noisy(scene, config, index, seed):
    image = truth_image(scene, index)
    rng = np.random.default_rng(seed)
    noise = np.sqrt(
        np.maximum(image, 0) / config.gain_e_per_adu + (config.read_noise_e / config.gain_e_per_adu) ** 2
    )
    return (image + rng.normal(0.0, 1.0, image.shape) * noise).astype(np.float32)


def wide_catalog(catalog: Table, ra0: float, dec0: float, hint_ra: float, hint_dec: float) -> Table:
    rng = np.random.default_rng(11)
    n_bg = int(len(catalog) * math.pi * 2.6**2 / (0.235 * 0.206))
    r = 2.6 * np.sqrt(rng.uniform(0, 1, n_bg))
    phi = rng.uniform(0, 2 * math.pi, n_bg)
    ra, dec = from_tangent_plane(r * np.cos(phi), r * np.sin(phi), hint_ra, hint_dec)
    xi, eta = to_tangent_plane(ra, dec, ra0, dec0)
    out = (np.abs(xi) > 0.13) | (np.abs(eta) > 0.12)
    bg = Table(
        {
            "ra_deg": ra[out],
            "dec_deg": dec[out],
            "mag": rng.choice(np.asarray(catalog["mag"]), out.sum()),
            "source_id": [f"bg{i}" for i in range(out.sum())],
        }
    )
    wide = vstack([catalog["ra_deg", "dec_deg", "mag", "source_id"], bg])
    return wide[np.argsort(wide["mag"])]


def arcsat_series(repeat: int) -> tuple[str, float, float, str]:
    from astropy.io import fits

    from darkroom.testing import shared_data_dir

    files = sorted((shared_data_dir() / "arcsat-xo1b-transit").glob("XO1-b_z_*.fits.gz"))
    frames = []
    first_wcs = None
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path) as hdul:
                data = hdul[0].data.astype(np.float32)
                if first_wcs is None:
                    first_wcs = WCS(hdul[0].header)
        cat = extract_frame(
            data, detect_config=DetectConfig(threshold_sigma=3.0, filter_fwhm_pix=4.0)
        ).catalog
        frames.append(FrameSources(sources=cat, shape=data.shape, name=path.name))
    frames[0].wcs = first_wcs
    sec, mb, results = measure(lambda: solve_frame_series(frames, reference_index=0), repeat)
    n_ok = sum(r.ok for r in results)
    return (
        f"series ({len(frames)} ARCSAT frames)",
        sec,
        mb,
        f"{n_ok}/{len(frames)} solved, {sec / len(frames):.3f} s/frame",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--arcsat", action="store_true", help="also time the 80-frame ARCSAT series")
    args = parser.parse_args()

    config = SimConfig(n_science=2, n_bias=0, n_dark=0, n_flat=0, sip_amplitude_pix=4.0, seed=3)
    scene = build_scene(config)
    shape = config.shape
    sources0 = extract_frame(noisy(scene, config, 0, 0)).catalog
    sources1 = extract_frame(noisy(scene, config, 1, 1)).catalog
    catalog = standardize_catalog(
        scene.catalog, columns=CatalogColumns(ra="ra_deg", dec="dec_deg", mag="r_mag", source_id="id")
    )
    truth = scene.light_wcs(0)
    ra0, dec0 = scene.light_centre_sky(0)
    rows = []

    hint = PointingHint(ra_deg=ra0 + 0.1, dec_deg=dec0 - 0.07, pixel_scale_arcsec=0.67 * 1.03)
    sec, mb, res = measure(
        lambda: solve_frame(sources0, shape=shape, catalog=catalog, hint=hint), args.repeat
    )
    rows.append(
        (
            "solve, hint",
            sec,
            mb,
            f"{res.n_matched} stars, {grid_rms_pix(res.wcs, truth, shape):.3f} px vs truth",
        )
    )

    hint_ra, hint_dec = ra0 + 1.2 / math.cos(math.radians(dec0)), dec0
    wide = wide_catalog(catalog, ra0, dec0, hint_ra, hint_dec)
    wide_hint = PointingHint(ra_deg=hint_ra, dec_deg=hint_dec, pixel_scale_arcsec=0.67)
    sec, mb, res = measure(
        lambda: solve_with_hint(
            sources0, catalog=wide, hint=wide_hint, shape=shape, config=SolveConfig(search_radius_deg=1.5)
        ),
        max(1, args.repeat // 2),
    )
    rows.append(
        (
            f"solve, wide hint ({len(wide)} stars)",
            sec,
            mb,
            f"{grid_rms_pix(res.wcs, truth, shape):.3f} px vs truth",
        )
    )

    header = WCS(naxis=2)
    header.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    header.wcs.crval = truth.wcs.crval
    header.wcs.crpix = [truth.wcs.crpix[0] + 2.0, truth.wcs.crpix[1] - 1.0]
    header.wcs.cd = truth.wcs.cd
    header.wcs.set()
    sec, mb, res = measure(
        lambda: solve_frame(sources0, shape=shape, catalog=catalog, header_wcs=header), args.repeat
    )
    rows.append(
        (
            "solve, header refine",
            sec,
            mb,
            f"{res.method}, {grid_rms_pix(res.wcs, truth, shape):.3f} px vs truth",
        )
    )
    matched = res.matches

    t_al, mb, al = measure(lambda: align_sources(sources1, sources0), args.repeat)
    rows.append(("align, darkroom", t_al, mb, f"{al.n_matched} pairs, rms {al.rms_pix:.3f} px"))
    try:
        import astroalign

        def by_flux(t):
            keep = ~np.asarray(t["sharp"])
            t = t[keep][np.argsort(-np.asarray(t["flux_aper_adu"])[keep])]
            return np.column_stack([t["x"], t["y"]])

        s1, s0 = by_flux(sources1), by_flux(sources0)
        t_aa, mb, _ = measure(lambda: astroalign.find_transform(s1, s0), args.repeat)
        rows.append(("align, astroalign", t_aa, mb, f"ratio {t_aa / t_al:.1f}x"))
    except ImportError:
        pass

    x = np.asarray(sources0["x"])[matched["source_index"]]
    y = np.asarray(sources0["y"])[matched["source_index"]]
    ra = np.asarray(catalog["ra_deg"])[matched["catalog_index"]]
    dec = np.asarray(catalog["dec_deg"])[matched["catalog_index"]]
    t_fit, mb, model = measure(
        lambda: fit_tan_sip(x, y, ra, dec, order=3, ref_pix=(511.5, 511.5)), args.repeat
    )
    rows.append(
        (
            f"fit, darkroom ({len(x)} pairs)",
            t_fit,
            mb,
            f"{grid_rms_pix(model.to_wcs(shape=shape), truth, shape):.3f} px vs truth",
        )
    )
    from astropy.coordinates import SkyCoord
    from astropy.wcs.utils import fit_wcs_from_points

    coords = SkyCoord(ra, dec, unit="deg")
    t_as, mb, wcs_as = measure(
        lambda: fit_wcs_from_points((x, y), coords, proj_point="center", sip_degree=3), args.repeat
    )
    rows.append(
        (
            f"fit, astropy ({len(x)} pairs)",
            t_as,
            mb,
            f"ratio {t_as / t_fit:.0f}x, {grid_rms_pix(wcs_as, truth, shape):.3f} px vs truth",
        )
    )
    if args.arcsat:
        rows.append(arcsat_series(1))

    width = max(len(r[0]) for r in rows)
    print(f"{'stage':<{width}}  {'size':<9}  {'seconds':>8}  {'peak MB':>8}  notes")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 8}  {'-' * 8}  {'-' * 40}")
    for name, sec, mb, note in rows:
        print(f"{name:<{width}}  {'1024x1024':<9}  {sec:8.3f}  {mb:8.1f}  {note}")


if __name__ == "__main__":
    main()
