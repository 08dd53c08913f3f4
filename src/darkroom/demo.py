"""``darkroom demo``: a simulated night, end to end, with the recovered figures next to the truth.

Simulates a short night with known truth (a 2 % transit, a 4 % variable, a
reference catalog), makes a repository beside it, ingests the raw frames, runs every
stage, writes the night report, and prints what it recovered against what the
simulator put in: transit depth, zero point, colour term, astrometric rms.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
from astropy.time import Time
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

__all__ = ["demo_sim_config", "run_demo", "sim_repo_overrides"]


def demo_sim_config(*, n_science: int, size: int, seed: int):
    """The simulated night of the demo: short cadence so a whole short transit fits in it."""
    from darkroom.sim import PointingJump, SimConfig, TransitConfig, VariableConfig

    return SimConfig(
        seed=seed,
        shape=(size, size),
        n_science=n_science,
        exptime_s=30.0,
        cadence_s=40.0,
        n_stars=max(300, int(4000 * (size / 1024) ** 2)),  # dense enough for a SIP fit of the distortion
        planet=TransitConfig(
            depth=0.02, duration_h=max(n_science * 40.0 / 3600 * 0.5, 0.11), impact_parameter=0.2
        ),
        variable=VariableConfig(amplitude=0.04, period_h=max(n_science * 40.0 / 3600, 0.1)),
        jumps=(PointingJump(frame_index=n_science // 2, dx_pix=12, dy_pix=-8),) if n_science >= 4 else (),
    )


def sim_repo_overrides(night) -> list[str]:
    """darkroom.yaml settings for a simulated night's repository: the simulator's reference
    catalogue (``refcat.ecsv`` in the repository) for astrometry and photometry, and its
    transiting host (named ``night.config.object_name``) and variable as targets."""
    epoch = Time(night.config.start_utc).jyear
    cat = night.truth.catalog
    host = cat[cat["id"] == night.truth.host_id][0]
    var = cat[cat["id"] == night.truth.variable_id][0]
    return [
        "astrometry.solve.reference_catalog.kind=file",
        "astrometry.solve.reference_catalog.path=refcat.ecsv",
        "astrometry.solve.reference_catalog.columns={ra: ra_deg, dec: dec_deg, mag: r_mag, pmra: pmra_mas_yr, "
        f"pmdec: pmdec_mas_yr, source_id: source_id, epoch_jyear: {epoch:.5f}}}",
        "photometry.measure.ref_mag_column=r_mag",
        "photometry.measure.ref_colour_columns=[g_mag, r_mag]",
        f"targets=[{{name: {night.config.object_name}, ra_deg: {host['ra_deg']:.8f}, dec_deg: {host['dec_deg']:.8f}}},"
        f" {{name: variable, ra_deg: {var['ra_deg']:.8f}, dec_deg: {var['dec_deg']:.8f}}}]",
    ]


def _transit_depth(repo, night) -> tuple[float | None, float | None]:
    """(recovered, true) depth: median in transit over median out of transit."""
    truth = night.truth
    cat = truth.catalog
    host = cat[cat["id"] == truth.host_id][0]
    lc = repo.lightcurve(
        ra=float(host["ra_deg"]), dec=float(host["dec_deg"]), differential=True, keep_flagged=True
    )
    true = np.asarray(truth.lightcurve["host_rel_flux"])
    in_tr = true < 1 - 0.8 * (1 - true.min())
    out_tr = true > 0.9999
    if len(lc) != len(true) or in_tr.sum() < 2 or out_tr.sum() < 2:
        return None, None
    rel = np.asarray(lc["rel_flux"], dtype=float)
    return (
        float(1 - np.nanmedian(rel[in_tr]) / np.nanmedian(rel[out_tr])),
        float(1 - np.median(true[in_tr]) / np.median(true[out_tr])),
    )


def _photcal(repo, night) -> tuple[float | None, float | None]:
    """(median zero-point error [mag], mean colour term) over the frames."""
    from darkroom.pipeline.products import image_products

    s = night.truth.summary
    lights = night.truth.frames[night.truth.frames["kind"] == "light"]
    with repo.registry.session() as sess:
        images = image_products(sess, None, only_ok=False)
    dzp, colour = [], []
    for image, row in zip(images, lights, strict=False):
        pc = image.photcal or {}
        if pc.get("zp") is None:
            continue
        truth = (
            s["zero_point_mag"]
            - s["extinction_mag_per_airmass"] * row["airmass"]
            - 2.5 * math.log10(s["gain_e_per_adu"])
        )
        dzp.append(pc["zp"] - truth)
        if pc.get("colour_term") is not None:
            colour.append(pc["colour_term"])
    return (float(np.median(dzp)) if dzp else None, float(np.mean(colour)) if colour else None)


def _astrometric_rms(repo, night) -> float | None:
    """Median over frames of the rms [pixels] between darkroom's WCS and the truth over a grid."""
    from darkroom.pipeline.astrometry import wcs_from_astrom
    from darkroom.pipeline.products import image_products

    with repo.registry.session() as sess:
        images = image_products(sess, None, only_ok=False)
    ny, nx = night.config.shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 8), np.linspace(0, ny - 1, 8))
    rms = []
    for i, image in enumerate(images):
        wcs = wcs_from_astrom(image.astrom or {})
        if wcs is None:
            continue
        ra, dec = night.truth.light_wcs(i).all_pix2world(gx.ravel(), gy.ravel(), 0)
        x, y = wcs.all_world2pix(ra, dec, 0)
        rms.append(float(np.sqrt(np.mean((x - gx.ravel()) ** 2 + (y - gy.ravel()) ** 2))))
    return float(np.median(rms)) if rms else None


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def run_demo(
    out: Path,
    *,
    n_science: int = 36,
    size: int = 512,
    seed: int = 1,
    workers: int = 0,
    console: Console | None = None,
    quiet: bool = False,
) -> dict:
    """Run the demo into ``out`` (created); return the figures it printed."""
    from darkroom.facade import Repository
    from darkroom.pipeline.drive import drive_stages, print_ingest_summary, print_reports
    from darkroom.pipeline.executors import make_executor
    from darkroom.pipeline.ingest import ingest_paths
    from darkroom.pipeline.report import write_reports
    from darkroom.pipeline.run import all_stages
    from darkroom.sim import simulate_night

    console = console or Console()
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    raw_dir = out / "raw"
    repo_dir = out / "repo"

    t0 = time.perf_counter()
    night = simulate_night(raw_dir, config=demo_sim_config(n_science=n_science, size=size, seed=seed))
    n_raw = sum(len(v) for v in night.raw_paths.values())
    console.print(
        f"[bold]1. simulated[/] a night of {n_raw} raw frames ({size}x{size}) in "
        f"{time.perf_counter() - t0:.1f} s -> {raw_dir}"
    )

    repo = Repository.init(repo_dir, overrides=sim_repo_overrides(night))
    shutil.copy(night.refcat_path, repo.root / "refcat.ecsv")
    console.print(
        f"[bold]2. repository[/] {repo.root} ({repo.registry.backend} registry, reference catalog refcat.ecsv)"
    )

    t0 = time.perf_counter()
    raw_files = [p for paths in night.raw_paths.values() for p in paths]  # not the truth tables beside them
    summary = ingest_paths(repo.registry, raw_files, config=repo.config.ingest, profile_root=repo.root)
    console.print("[bold]3. ingest[/]")
    print_ingest_summary(summary, time.perf_counter() - t0, console)

    console.print(
        "[bold]4. pipeline[/] (masters, calibration, extraction, astrometry, photometry, light curves)"
    )
    t0 = time.perf_counter()
    executor = make_executor(workers=workers)
    try:
        reports = drive_stages(
            repo.registry, all_stages(repo.root, repo.config), executor=executor, quiet=quiet
        )
    finally:
        executor.close()
    t_pipe = time.perf_counter() - t0
    print_reports(reports, console)

    depth, depth_true = _transit_depth(repo, night)
    dzp, colour = _photcal(repo, night)
    rms_pix = _astrometric_rms(repo, night)
    truth = night.truth.summary
    table = RichTable(title="recovered vs truth")
    for col in ("figure", "darkroom", "truth"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    table.add_row("transit depth", _fmt(depth, ".4f"), _fmt(depth_true, ".4f"))
    table.add_row(escape("zero point error [mag]"), _fmt(dzp, "+.4f"), "0")
    table.add_row("colour term", _fmt(colour, ".3f"), _fmt(truth.get("colour_term"), ".3f"))
    table.add_row(escape("astrometric rms vs truth WCS [pix]"), _fmt(rms_pix, ".3f"), "0")
    console.print(table)

    console.print("[bold]5. report[/]")
    pages = write_reports(repo)
    for page in pages:
        console.print(f"report: {page}", soft_wrap=True)
    figures = {
        "n_raw": n_raw,
        "n_registered": len(summary.registered),
        "n_quarantined": len(summary.quarantined),
        "n_calibrated": next((r.n_done for r in reports if r.stage == "calibrate"), 0),
        "n_failed": sum(r.n_failed for r in reports),
        "seconds_pipeline": t_pipe,
        "transit_depth": depth,
        "transit_depth_true": depth_true,
        "zero_point_error_mag": dzp,
        "colour_term": colour,
        "astrometric_rms_pix": rms_pix,
        "report": str(pages[0]) if pages else None,
    }
    repo.close()
    console.print(
        f"done in {t_pipe:.0f} s: {figures['n_calibrated']} frames calibrated, {figures['n_failed']} failures; "
        f"try 'darkroom status {repo_dir}' and "
        f"'darkroom lightcurve {repo_dir} --name {night.config.object_name} --differential --plot lc.png'",
        soft_wrap=True,
    )
    return figures
