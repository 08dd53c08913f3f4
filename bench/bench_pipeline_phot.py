"""Benchmark of the extract, associate, photometry and lightcurves stages on a night.

Default: a darkroom.sim night (1024 x 1024 pixels, ``--frames`` science frames, ~800 stars, its
reference catalogue configured). ``--night``: the ARCSAT XO-1b night of ../shared/data (81
frames of 1k x 1k, ~25 stars). The night is ingested, calibrated and solved first (not timed);
then each stage is forgotten and run again, serially: once timed, once more under tracemalloc
for its peak (tracing slows numpy-heavy code several times, so it never overlaps a timing).

Rows:
  extract            the stage: read SCI + MASK, background, sources, PSF fit, quality,
                     catalogue to Parquet, source_catalog rows
  associate          the stage: read the detection catalogs, sky positions, associate,
                     record the sources
  photometry         the stage, all images: recentring, forced positions, aperture
                     photometry at every source, aperture correction, zero point, Parquet
                     and measurement rows
  lightcurves        the stage: transparency of every frame, mean magnitudes, the targets'
                     curves (ECSV + PNG)
  associate core     darkroom.timeseries.associate on every frame's detections
                     vs astropy SkyCoord.match_to_catalog_sky frame after frame against the
                     running source list
  aperture core      darkroom.phot.aperture_photometry with the stage's apertures at one
                     frame's positions vs photutils aperture_photometry (exact, VAR error)
                     + ApertureStats (sigma-clipped annulus median)
  catalogue I/O      one frame's photometry table written and read by darkroom.io.tables
                     vs astropy's Table.write / Table.read (Parquet)
  query              Repository.lightcurve(ra, dec, differential=True) of the target
Seconds are CPU seconds (``time.process_time``; the machine is shared, CPU time is steadier
than wall time); ``ms/frame`` divides a stage by the frames (its registry work included);
``unit ms`` is the median CPU time of one unit's computation (``Stage.run``: for the
photometry, one frame read, measured, calibrated and written). The ratio column is reference
time / darkroom time. The load average is printed.

Run: .venv/bin/python bench/bench_pipeline_phot.py [--frames 20] [--night]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.time import Time

from _common import measure, print_table
from darkroom.catalogs import read_table
from darkroom.facade import Repository
from darkroom.pipeline.astrometry import wcs_from_astrom
from darkroom.pipeline.ingest import ingest_paths
from darkroom.pipeline.products import image_products
from darkroom.pipeline.run import all_stages
from darkroom.pipeline.runner import run_stage
from darkroom.sim import SimConfig, simulate_night


def _repo(base: Path, n_frames: int) -> tuple[Repository, object]:
    cfg = SimConfig(seed=3, n_science=n_frames, n_bias=3, n_dark=3, n_flat=3)
    night = simulate_night(base / "night", config=cfg)
    epoch = Time(cfg.start_utc).jyear
    host = night.truth.catalog[night.truth.catalog["id"] == night.truth.host_id][0]
    overrides = [
        "astrometry.solve.reference_catalog.kind=file",
        "astrometry.solve.reference_catalog.path=refcat.ecsv",
        "astrometry.solve.reference_catalog.columns={ra: ra_deg, dec: dec_deg, mag: r_mag, pmra: pmra_mas_yr, "
        f"pmdec: pmdec_mas_yr, source_id: source_id, epoch_jyear: {epoch:.5f}}}",
        "photometry.measure.ref_mag_column=r_mag",
        "photometry.measure.ref_colour_columns=[g_mag, r_mag]",
        f"targets=[{{name: host, ra_deg: {host['ra_deg']:.8f}, dec_deg: {host['dec_deg']:.8f}}}]",
    ]
    repo = Repository.init(base / "repo", overrides=overrides)
    shutil.copy(night.refcat_path, repo.root / "refcat.ecsv")
    ingest_paths(repo.registry, [p for paths in night.raw_paths.values() for p in paths])
    for stage in all_stages(repo.root, repo.config)[:-3]:
        run_stage(repo.registry, stage)
    return repo, night


def _association_core(repo: Repository) -> tuple[float, float, int]:
    """darkroom.timeseries.associate vs frame-by-frame SkyCoord matching, same detections."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.table import Table, vstack

    from darkroom.timeseries import AssociationConfig, associate

    with repo.registry.session() as s:
        images = [(im.id, im.mjd_mid, im.catalog_path, im.astrom) for im in image_products(s, None)]
    parts = []
    for image_id, mjd, catalog_path, astrom in images:
        wcs = wcs_from_astrom(astrom or {})
        if wcs is None:  # astrometry failed
            continue
        cat = read_table(repo.root / catalog_path)
        ra, dec = wcs.all_pix2world(np.asarray(cat["x"]), np.asarray(cat["y"]), 0)
        parts.append(
            Table(
                {
                    "image_id": np.full(len(cat), image_id),
                    "mjd_utc": np.full(len(cat), mjd),
                    "ra": ra,
                    "dec": dec,
                }
            )
        )
    det = vstack(parts)
    t0 = time.perf_counter()
    res = associate(det, config=AssociationConfig(radius_arcsec=1.0, mag_col="none"))
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ra_all = dec_all = None
    for part in parts:
        ra, dec = np.asarray(part["ra"]), np.asarray(part["dec"])
        if ra_all is None:
            ra_all, dec_all = ra, dec
            continue
        _, sep, _ = SkyCoord(ra * u.deg, dec * u.deg).match_to_catalog_sky(
            SkyCoord(ra_all * u.deg, dec_all * u.deg)
        )
        new = sep.arcsec > 1.0
        ra_all, dec_all = np.concatenate([ra_all, ra[new]]), np.concatenate([dec_all, dec[new]])
    return ours, time.perf_counter() - t0, len(res.sources)


def _aperture_core(repo: Repository) -> tuple[float, float, int]:
    """darkroom aperture_photometry vs photutils at one frame's measured positions."""
    from astropy.io import fits
    from astropy.stats import SigmaClip
    from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture, aperture_photometry

    from darkroom.phot import aperture_photometry as darkroom_photometry

    with repo.registry.session() as s:
        # the frame with the most sources measured
        image = max(
            image_products(s, None, need=("photcal",)), key=lambda im: im.photcal.get("n_measured") or 0
        )
        path, phot_path, fwhm = image.path, image.photcal["path"], image.photcal["fwhm_pix"]
    config = all_stages(repo.root, repo.config)[-2].config.aperture
    meas = read_table(repo.root / phot_path)
    with fits.open(repo.root / path) as hdul:
        sci, mask, var = hdul["SCI"].data, hdul["MASK"].data, hdul["VAR"].data
    x, y = np.asarray(meas["x"]), np.asarray(meas["y"])
    ours, _, _ = measure(
        lambda: darkroom_photometry(sci, mask, var, x, y, fwhm_pix=fwhm, config=config), repeat=3
    )
    xy = np.column_stack([x, y])

    def photutils_run() -> None:
        apertures = [CircularAperture(xy, r=k * fwhm) for k in config.radii_fwhm]
        aperture_photometry(sci, apertures, error=np.sqrt(var), mask=(mask & 32) > 0, method="exact")
        annulus = CircularAnnulus(xy, config.annulus_in_fwhm * fwhm, config.annulus_out_fwhm * fwhm)
        ApertureStats(sci, annulus, sigma_clip=SigmaClip(3.0, maxiters=5)).median  # noqa: B018

    theirs, _, _ = measure(photutils_run, repeat=3)
    return ours, theirs, len(meas)


def _arcsat_repo(base: Path) -> tuple[Repository, tuple[float, float]]:
    """The ARCSAT XO-1b night through astrometry (not timed); the target's (ra, dec)."""
    from darkroom.testing import shared_data_dir

    ra, dec = 240.549333, 28.169556
    repo = Repository.init(
        base / "repo", overrides=[f"targets=[{{name: XO-1, ra_deg: {ra}, dec_deg: {dec}}}]"]
    )
    ingest_paths(repo.registry, [shared_data_dir() / "arcsat-xo1b-transit"])
    for stage in all_stages(repo.root, repo.config)[:-3]:
        run_stage(repo.registry, stage)
    return repo, (ra, dec)


def _timed(run, seconds: list[float]):
    """``run`` that appends the CPU seconds of each unit to ``seconds``."""

    def timed(unit):
        t0 = time.process_time()
        out = run(unit)
        seconds.append(time.process_time() - t0)
        return out

    return timed


def _cpu(fn) -> tuple[float, object]:
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def _catalogue_io(repo: Repository) -> tuple[float, float, int]:
    """One frame's photometry table through darkroom.io.tables vs astropy's Parquet I/O [CPU s]."""
    from astropy.table import Table

    from darkroom.io.tables import read_parquet, write_parquet

    with repo.registry.session() as s:
        image = max(
            image_products(s, None, need=("photcal",)), key=lambda im: im.photcal.get("n_measured") or 0
        )
        phot_path = repo.root / image.photcal["path"]
    table = Table.read(phot_path)
    out = phot_path.parent / "bench.parquet"
    ours = min(_cpu(lambda: (write_parquet(table, out), read_parquet(out)))[0] for _ in range(5))
    theirs = min(
        _cpu(lambda: (table.write(out, format="parquet", overwrite=True), Table.read(out)))[0]
        for _ in range(5)
    )
    out.unlink()
    return ours, theirs, len(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=20, help="science frames of the simulated night")
    parser.add_argument(
        "--night", action="store_true", help="the ARCSAT XO-1b night instead of a simulated one"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = Path(tempfile.mkdtemp(prefix="bench-pipeline-phot-"))
    try:
        if args.night:
            repo, target = _arcsat_repo(base)
        else:
            repo, night = _repo(base, args.frames)
            host = night.truth.catalog[night.truth.catalog["id"] == night.truth.host_id][0]
            target = (float(host["ra_deg"]), float(host["dec_deg"]))
        by_name = {st.name: st for st in all_stages(repo.root, repo.config)}
        timed = [by_name[name] for name in ("extract", "associate", "photometry", "lightcurves")]
        with repo.registry.session() as s:
            n_frames = len(image_products(s, None))
        for stage in reversed(timed):  # each reads the products of the one before
            with repo.registry.session() as s:
                stage.forget(s)
        load = os.getloadavg()
        rows = []
        for stage in timed:
            unit_cpu: list[float] = []
            stage.run = _timed(stage.run, unit_cpu)  # this instance only, for the timed run
            seconds, report = _cpu(lambda st=stage: run_stage(repo.registry, st))
            del stage.run
            assert report.n_failed == 0, report.failures
            with repo.registry.session() as s:
                stage.forget(s)
            _, peak, _ = measure(lambda st=stage: run_stage(repo.registry, st))
            rows.append(
                {
                    "stage": stage.name,
                    "size": f"{n_frames} frames",
                    "seconds": seconds,
                    "ms/frame": 1000 * seconds / max(n_frames, 1),
                    "unit ms": 1000 * float(np.median(unit_cpu)) if unit_cpu else "",
                    "peak MB": peak,
                    "ratio": "",
                }
            )
        ours, theirs, n = _association_core(repo)
        rows.append(
            {
                "stage": "associate core",
                "size": f"{n} sources",
                "seconds": ours,
                "ms/frame": 1000 * ours / max(n_frames, 1),
                "unit ms": "",
                "peak MB": "",
                "ratio": f"{theirs / ours:.1f} (astropy)",
            }
        )
        ours, theirs, n = _aperture_core(repo)
        rows.append(
            {
                "stage": "aperture core",
                "size": f"1 frame, {n} src",
                "seconds": ours,
                "ms/frame": 1000 * ours,
                "unit ms": "",
                "peak MB": "",
                "ratio": f"{theirs / ours:.1f} (photutils)",
            }
        )
        ours, theirs, n = _catalogue_io(repo)
        rows.append(
            {
                "stage": "catalogue I/O",
                "size": f"1 frame, {n} rows",
                "seconds": ours,
                "ms/frame": 1000 * ours,
                "unit ms": "",
                "peak MB": "",
                "ratio": f"{theirs / ours:.1f} (astropy)",
            }
        )
        seconds, peak, lc = measure(lambda: repo.lightcurve(ra=target[0], dec=target[1], differential=True))
        rows.append(
            {
                "stage": "query",
                "size": f"{len(lc)} points",
                "seconds": seconds,
                "ms/frame": "",
                "unit ms": "",
                "peak MB": peak,
                "ratio": "",
            }
        )
        print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs; CPU seconds")
        print_table(rows)
        repo.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
