"""Association, photometry and light-curve stages on a simulated night, and the light-curve query.

Simulated night (darkroom.sim, 400 x 480 pixels, 36 frames of 30 s, a 2 % transit of the
host, a 4 % sinusoidal variable, a pointing jump at frame 20; its reference catalogue
configured for astrometry and photometry): ingest -> ``darkroom run`` (every stage) ->
checks against the simulator's truth (``truth/summary.json`` and per-frame tables), which
does not come from the code under test:

* the zero point of frame i is ``zero_point_mag - k X_i - 2.5 log10(gain)`` in darkroom's
  convention (``m = -2.5 log10(adu / s) + zp + c (g - r)``, the sim's is per electron);
  the colour term is the sim's ``colour_term``;
* the host's true relative flux and the variable's amplitude come from the sim's models;
* a star below the detection limit has its true flux per frame in ``truth/stars``.

The small registry at the end is built by hand (rows inserted directly).
"""

from __future__ import annotations

import hashlib
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from astropy.table import Table
from astropy.time import Time
from typer.testing import CliRunner

from darkroom.catalogs import read_table
from darkroom.cli import app
from darkroom.errors import BadInputError
from darkroom.facade import Repository
from darkroom.phot import PhotFlag
from darkroom.pipeline.associate import AssociateStage
from darkroom.pipeline.lightcurves import LightCurvesStage
from darkroom.pipeline.photometry import PhotometryStage
from darkroom.pipeline.products import ImageProducts, image_products, poor_image_ids
from darkroom.pipeline.run import all_stages
from darkroom.pipeline.runner import run_stage
from darkroom.repo.bulk import insert_measurements
from darkroom.repo.models import (
    Association,
    AstromSolution,
    Exposure,
    Image,
    ImageQuality,
    Measurement,
    PhotCal,
    Provenance,
    Source,
    SourceCatalog,
    Transparency,
)
from darkroom.sim import PointingJump, SimConfig, SimNight, TransitConfig, VariableConfig, simulate_night
from darkroom.timeseries import LightCurveFlag
from darkroom.timeseries.field import assemble_lightcurve, frame_transparency
from darkroom.timeseries.settings import LightCurveSettings

runner = CliRunner()

SIM = SimConfig(
    seed=5,
    shape=(400, 480),
    n_science=36,
    n_bias=3,
    n_dark=3,
    n_flat=3,
    exptime_s=30.0,
    cadence_s=40.0,
    planet=TransitConfig(depth=0.02, duration_h=0.2, impact_parameter=0.2),
    variable=VariableConfig(r_mag=13.3, amplitude=0.04, period_h=0.3),
    jumps=(PointingJump(frame_index=20, dx_pix=15, dy_pix=-10),),
)


def _catalog_overrides(config: SimConfig) -> list[str]:
    """The sim's reference catalogue for astrometry and zero points."""
    epoch = Time(config.start_utc).jyear  # the refcat's epoch is the first frame's
    return [
        "astrometry.solve.reference_catalog.kind=file",
        "astrometry.solve.reference_catalog.path=refcat.ecsv",
        "astrometry.solve.reference_catalog.columns={ra: ra_deg, dec: dec_deg, mag: r_mag, pmra: pmra_mas_yr, "
        f"pmdec: pmdec_mas_yr, source_id: source_id, epoch_jyear: {epoch:.5f}}}",
        "photometry.measure.ref_mag_column=r_mag",
        "photometry.measure.ref_colour_columns=[g_mag, r_mag]",
    ]


def _overrides(night) -> list[str]:
    host = night.truth.catalog[night.truth.catalog["id"] == night.truth.host_id][0]
    return [
        *_catalog_overrides(SIM),
        "photometry.associate.reference_stars_mag_max=20.5",
        f"targets=[{{name: SIM-1b, ra_deg: {host['ra_deg']:.8f}, dec_deg: {host['dec_deg']:.8f}}}]",
    ]


def _run_night(base: Path, config: SimConfig, overrides: Callable[[SimNight], list[str]]):
    """Simulate a night and take it through ``darkroom run`` (all stages, serial)."""
    night = simulate_night(base / "night", config=config)
    root = base / "repo"
    repo = Repository.init(root, overrides=overrides(night))
    shutil.copy(night.refcat_path, root / "refcat.ecsv")
    repo.close()
    raw = night.raw_paths["light"][0].parent
    result = runner.invoke(app, ["run", str(root), "--ingest", str(raw), "-q"])
    assert result.exit_code == 0, result.output
    return night, Repository(root)


def _true_zero_point(summary: dict, airmass: float) -> float:
    """The sim's zero point in darkroom's convention (per adu/s; the sim's is per electron)."""
    return (
        summary["zero_point_mag"]
        - summary["extinction_mag_per_airmass"] * airmass
        - 2.5 * math.log10(summary["gain_e_per_adu"])
    )


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """The simulated night through ``darkroom run`` (all stages, serial)."""
    night, repo = _run_night(tmp_path_factory.mktemp("sim_photometry"), SIM, _overrides)
    yield night, repo
    repo.close()


# A crowded field: 1200 stars over 256 x 320 pixels (and a 40-pixel margin), reference stars to
# r = 20 measured as well: ~495 sources per frame, ~280 of them fitted in PSF groups.
CROWDED = SimConfig(
    seed=7,
    shape=(256, 320),
    n_science=6,
    n_bias=3,
    n_dark=3,
    n_flat=3,
    exptime_s=30.0,
    cadence_s=40.0,
    n_stars=1200,
)


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    """The crowded night through ``darkroom run`` with ``photometry.measure.method=psf``."""
    night, repo = _run_night(
        tmp_path_factory.mktemp("sim_psf"),
        CROWDED,
        lambda _: [
            *_catalog_overrides(CROWDED),
            "photometry.associate.reference_stars_mag_max=20.0",
            "photometry.measure.method=psf",
        ],
    )
    yield night, repo
    repo.close()


def _images(repo: Repository) -> list[ImageProducts]:
    """Images in time order with their newest products."""
    with repo.registry.session() as s:
        return image_products(s, None, only_ok=False)


def test_sim_zero_point_and_colour_term_against_truth(sim):
    night, repo = sim
    summary = night.truth.summary
    lights = night.truth.frames[night.truth.frames["kind"] == "light"]
    images = _images(repo)
    assert len(images) == len(lights) == SIM.n_science
    dzp, err, colour = [], [], []
    for image, row in zip(images, lights, strict=True):
        pc = image.photcal
        assert pc["mag_system"] == "calibrated" and pc["n_used"] >= 20, pc
        assert pc["method"] == "aperture" and "psf_model" not in pc
        dzp.append(pc["zp"] - _true_zero_point(summary, row["airmass"]))
        err.append(pc["zp_err"])
        colour.append(pc["colour_term"])
        assert pc["colour_fitted"] and pc["colour_term_err"] > 0
    dzp, err = np.array(dzp), np.array(err)
    # measured: median offset -0.002 mag (the light outside the 4-FWHM aperture), per-frame
    # scatter 0.005 mag, zp_err 0.006 mag
    assert abs(np.median(dzp)) < 0.01
    assert np.all(np.abs(dzp) < 0.01 + 3 * err)
    assert np.all((err > 0.001) & (err < 0.02))
    assert abs(np.mean(colour) - summary["colour_term"]) < 0.02


def test_sim_limiting_magnitude_is_where_sources_reach_five_sigma(sim):
    _, repo = sim
    image = _images(repo)[10]
    limit = image.photcal["mag_limit"]
    meas = repo.measurements(image_id=image.id)
    snr = np.asarray(meas["flux"]) / np.asarray(meas["flux_err"])
    near = (snr > 4) & (snr < 6.5)
    assert near.sum() >= 5
    # the 5-sigma limit is computed from the sky noise alone; sources at S/N 4-6.5 sit around it
    assert abs(np.median(np.asarray(meas["mag"])[near]) - limit) < 0.35


def test_sim_transit_depth_and_variable_amplitude(sim):
    night, repo = sim
    truth = night.truth
    cat = truth.catalog
    host = cat[cat["id"] == truth.host_id][0]
    var = cat[cat["id"] == truth.variable_id][0]
    lc = repo.lightcurve(ra=float(host["ra_deg"]), dec=float(host["dec_deg"]), differential=True)
    tl = truth.lightcurve
    assert len(lc) == SIM.n_science and np.all(np.diff(lc["mjd_utc"]) > 0)
    np.testing.assert_allclose(lc["bjd_tdb"], tl["bjd_tdb_mid"], rtol=0, atol=0.1 / 86400)
    np.testing.assert_allclose(lc["airmass"], tl["airmass"], atol=0.01)
    rel = np.asarray(lc["rel_flux"])
    true = np.asarray(tl["host_rel_flux"])
    in_tr = true < 1 - 0.8 * (1 - true.min())
    out_tr = true > 0.9999
    assert in_tr.sum() >= 6 and out_tr.sum() >= 10
    depth_true = 1 - np.median(true[in_tr]) / np.median(true[out_tr])
    depth = 1 - np.median(rel[in_tr]) / np.median(rel[out_tr])
    assert abs(depth - depth_true) < 0.1 * depth_true  # measured 0.0186 vs 0.0193
    assert set(lc.meta["comparison"]["r"]["source_ids"]).isdisjoint({lc.meta["source_id"]})
    # the variable: a sinusoid of known period and phase fitted to its differential light curve
    lv = repo.lightcurve(ra=float(var["ra_deg"]), dec=float(var["dec_deg"]), differential=True)
    p = truth.summary["variable"]
    phase = 2 * np.pi * (np.asarray(lv["bjd_tdb"]) - p["t_ref_bjd_tdb"]) / p["period_d"] + p["phase_rad"]
    design = np.column_stack([np.ones(len(lv)), np.sin(phase), np.cos(phase)])
    coef, *_ = np.linalg.lstsq(design, np.asarray(lv["rel_flux"]), rcond=None)
    amplitude = math.hypot(coef[1], coef[2]) / coef[0]
    assert abs(amplitude - p["amplitude"]) < 0.05 * p["amplitude"]  # measured 0.0402 vs 0.0400
    # the variable never enters the host's ensemble
    assert lv.meta["source_id"] not in lc.meta["comparison"]["r"]["source_ids"]


def test_sim_forced_photometry_of_stars_below_the_detection_limit(sim):
    night, repo = sim
    truth = night.truth
    images = _images(repo)
    limit = np.median([im.photcal["mag_limit"] for im in images])
    apcorr = {im.id: im.photcal["apcorr_mag"] for im in images}
    sources = repo.sources()
    never = sources[sources["n_epochs"] == 0]
    assert len(never) > 20  # reference-catalogue stars that were never detected
    cat = truth.catalog
    picked = 0
    pulls = []
    for src in never:
        sep = (
            np.hypot(
                (np.asarray(cat["ra_deg"]) - src["ra_deg"]) * math.cos(math.radians(src["dec_deg"])),
                np.asarray(cat["dec_deg"]) - src["dec_deg"],
            )
            * 3600.0
        )
        k = int(np.argmin(sep))
        star = cat[k]
        crowded = (sep < 15 * SIM.pixel_scale_arcsec) & (np.asarray(cat["r_mag"]) < star["r_mag"] + 2.5)
        if sep[k] > 0.05 or crowded.sum() > 1 or not (limit + 0.3 < star["r_mag"] < limit + 1.5):
            continue
        meas = repo.measurements(source_id=int(src["source_id"]))
        on = []
        for i, stars in enumerate(truth.light_stars):
            row = stars[stars["id"] == star["id"]]
            if len(row) and row["frac_on_chip"][0] > 0.999:
                on.append((images[i].id, float(row["flux_adu"][0])))
        if len(on) < 30 or len(meas) < 30:
            continue
        true = dict(on)
        keep = np.isin(np.asarray(meas["image_id"]), list(true))
        m = meas[keep]
        assert np.all(m["forced"]) and np.all(np.asarray(m["flags"]) & int(PhotFlag.FORCED))
        assert np.median(np.asarray(m["flux"]) / np.asarray(m["flux_err"])) < 5  # below the limit
        total = np.asarray(m["flux"]) * 10 ** (-0.4 * np.array([apcorr[i] for i in m["image_id"]]))
        expected = np.array([true[i] for i in m["image_id"]])
        mean_err = np.sqrt(np.sum(np.asarray(m["flux_err"]) ** 2)) / len(m)
        pulls.append((np.mean(total) - np.mean(expected)) / mean_err)
        picked += 1
    assert picked >= 10, f"only {picked} undetected reference stars on the frames"
    pulls = np.array(pulls)
    # each star: (mean forced flux - mean true flux) / error of the mean; measured median -0.4,
    # 23 of 25 within 2.5 (the others sit on the wings of brighter stars)
    assert abs(np.median(pulls)) < 1.0, pulls
    assert np.mean(np.abs(pulls) < 2.5) >= 0.75, pulls


def test_sim_registry_rows_products_and_rerun(sim):
    _, repo = sim
    images = _images(repo)
    with repo.registry.session() as s:
        n_src = s.scalar(sa.select(sa.func.count()).select_from(Source))
        n_meas = s.scalar(sa.select(sa.func.count()).select_from(Measurement))
        dup = s.execute(
            sa.select(Measurement.source_id, Measurement.image_id)
            .group_by(Measurement.source_id, Measurement.image_id, Measurement.provenance_id)
            .having(sa.func.count() > 1)
        ).all()
        # plain SQL works on the rows
        by_sql = s.execute(
            sa.text("SELECT count(*) FROM measurement m JOIN image i ON i.id = m.image_id WHERE m.forced = 1")
        ).scalar()
    assert n_src > 300 and not dup
    assert n_meas == sum(im.photcal["n_measured"] for im in images)
    assert by_sql == sum(im.photcal["n_forced"] for im in images) > 0
    # each frame's photometry file is the one its row names, byte for byte (written by the
    # stage's writer thread while the next frame was measured)
    for im in images:
        path = repo.root / im.photcal["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == im.photcal["sha256"]
    sources = repo.sources()
    detected = sources[sources["n_epochs"] > 0]
    assert np.all(detected["n_epochs"] >= 3) and np.all(np.isfinite(detected["ra_deg"]))
    assert "mag_r" in sources.colnames and np.isfinite(detected["mag_r"]).mean() > 0.95
    # the transparency marks and the target's products of the lightcurves stage
    assert all(im.photcal["transparency"]["low"] is False for im in images)  # a clear night
    assert not any("transparency" in (im.quality.get("poor_reason") or "") for im in images)
    assert all("marked_poor" not in im.photcal["transparency"] for im in images)
    prov = all_stages(repo.root, repo.config)[-1].provenance_id
    folder = repo.root / "lightcurves" / prov
    ecsv = Table.read(folder / "SIM-1b.ecsv", format="ascii.ecsv")
    assert len(ecsv) == SIM.n_science and ecsv.meta["target_name"] == "SIM-1b"
    assert (folder / "SIM-1b_r_s0.png").stat().st_size > 10_000
    # re-running plans nothing; redoing the photometry replaces its rows
    again = [run_stage(repo.registry, st) for st in all_stages(repo.root, repo.config)]
    assert all(r.n_planned == 0 for r in again)
    stages = {st.name: st for st in all_stages(repo.root, repo.config)}
    assert isinstance(stages["photometry"], PhotometryStage)
    with repo.registry.session() as s:
        stages["photometry"].forget(s)
    redo = run_stage(repo.registry, stages["photometry"])
    assert redo.n_done == SIM.n_science
    with repo.registry.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Measurement)) == n_meas
    assert isinstance(stages["associate"], AssociateStage) and isinstance(
        stages["lightcurves"], LightCurvesStage
    )


def test_sim_cli_lightcurve_by_name_and_files(sim, tmp_path):
    _, repo = sim
    out = tmp_path / "host.parquet"
    png = tmp_path / "host.png"
    res = runner.invoke(
        app,
        [
            "lightcurve",
            str(repo.root),
            "--name",
            "sim 1b",
            "--differential",
            "-o",
            str(out),
            "--plot",
            str(png),
        ],
    )
    assert res.exit_code == 0, res.output
    from darkroom.timeseries import read_lightcurve

    lc = read_lightcurve(out)
    for col in (
        "bjd_tdb", "mjd_utc", "filter", "flux", "flux_err", "mag", "mag_err", "rel_flux", "rel_flux_err",
        "airmass", "fwhm", "flags", "image_id",
    ):  # fmt: skip
        assert col in lc.colnames
    assert len(lc) == SIM.n_science and png.stat().st_size > 10_000
    # the same object by source id and by a pixel of one frame
    host_id = int(lc["source_id"][0])
    by_id = repo.lightcurve(source_id=host_id)
    assert list(by_id["image_id"]) == list(lc["image_id"])
    first = _images(repo)[0]
    with repo.registry.session() as s:
        raw = s.scalar(sa.select(Exposure.path).where(Exposure.id == first.exposure_id))
    x, y = float(lc["x"][0]), float(lc["y"][0])
    by_pixel = repo.lightcurve(pixel=(x + 0.4, y - 0.3), frame=Path(raw).name)
    assert by_pixel.meta["source_id"] == host_id
    # user-named comparison stars, and one file per filter and season
    named = [
        int(c)
        for c in repo.lightcurve(source_id=host_id, differential=True).meta["comparison"]["r"]["source_ids"][
            :2
        ]
    ]
    split = tmp_path / "split.ecsv"
    args = [
        "lightcurve",
        str(repo.root),
        "--source",
        str(host_id),
        "--differential",
        "--split",
        "-o",
        str(split),
    ]
    res = runner.invoke(app, [*args, "--comparison", str(named[0]), "--comparison", str(named[1])])
    assert res.exit_code == 0, res.output
    part = Table.read(tmp_path / "split_r_s0.ecsv", format="ascii.ecsv")
    assert part.meta["comparison"]["r"]["source_ids"] == named and len(part) == SIM.n_science
    bad = runner.invoke(app, ["lightcurve", str(repo.root), "--ra", "10.0", "--dec", "-40.0"])
    assert bad.exit_code == 1 and "no source within" in bad.output


def test_sim_field_without_absolute_wcs_is_associated_in_reference_pixels(sim, tmp_path):
    night, repo = sim
    root = tmp_path / "repo"
    shutil.copytree(repo.root, root)
    r = Repository(root, overrides=["astrometry.solve.reference_catalog=null"])
    reports = [run_stage(r.registry, st) for st in all_stages(r.root, r.config)]
    assert all(rep.n_failed == 0 for rep in reports), [rep.failures for rep in reports]
    images = _images(r)
    assoc = [im.photcal["association"] for im in images]
    assert {a["coords"] for a in assoc} == {"pixel"}
    ref_id = images[0].astrom["reference_image_id"]
    ref_exposure = next(im.exposure_id for im in images if im.id == ref_id)
    assert {a["field"] for a in assoc} == {f"SIM-1b@exp{ref_exposure}"}
    assert all(im.photcal["mag_system"] == "instrumental" for im in images)
    host = r.lightcurve(pixel=(242.8, 196.8), frame=images[0].path, differential=True)
    assert host.meta["field"] == f"SIM-1b@exp{ref_exposure}"
    # positions follow the 15/-10 pixel jump at frame 20
    assert np.hypot(*(np.array([host["x"][20], host["y"][20]]) - [host["x"][19], host["y"][19]])) > 12
    true = np.asarray(night.truth.lightcurve["host_rel_flux"])
    rel = np.asarray(host["rel_flux"])
    in_tr, out_tr = true < 1 - 0.8 * (1 - true.min()), true > 0.9999
    depth_true = 1 - np.median(true[in_tr]) / np.median(true[out_tr])
    assert abs(1 - np.median(rel[in_tr]) / np.median(rel[out_tr]) - depth_true) < 0.1 * depth_true
    r.close()


# ----------------------------------------------------------------------------- PSF photometry


def _truth_match(stars: Table, phot: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per measured row: distance to the nearest true star [pix], its true flux [adu], and the true
    flux of all other stars within 12 pixels (~4.5 FWHM) over its own."""
    from scipy.spatial import cKDTree

    tx, ty = np.asarray(stars["x"], float), np.asarray(stars["y"], float)
    true = np.asarray(stars["flux_adu"], float)
    tree = cKDTree(np.column_stack([tx, ty]))
    xy = np.column_stack([np.asarray(phot["x"], float), np.asarray(phot["y"], float)])
    dist, k = tree.query(xy)
    near = tree.query_ball_point(xy, r=12.0)
    others = np.array([true[v].sum() for v in near]) - true[k]
    return dist, true[k], others / true[k]


def test_crowded_psf_zero_point_and_colour_term_against_truth(crowded):
    night, repo = crowded
    summary = night.truth.summary
    lights = night.truth.frames[night.truth.frames["kind"] == "light"]
    images = _images(repo)
    assert len(images) == len(lights) == CROWDED.n_science
    dzp, err, colour = [], [], []
    for image, row in zip(images, lights, strict=True):
        pc = image.photcal
        assert pc["method"] == "psf" and pc["psf_model"] == "moffat" and 2.5 < pc["psf_beta"] < 3.5, pc
        assert pc["mag_system"] == "calibrated" and pc["n_used"] >= 20 and pc["apcorr_mag"] == 0.0
        assert pc["n_measured"] > 400 and pc["n_psf_blended"] > 150  # crowded: most stars fitted in groups
        dzp.append(pc["zp"] - _true_zero_point(summary, row["airmass"]))
        err.append(pc["zp_err"])
        colour.append(pc["colour_term"])
        # the lightcurves stage ran on the PSF measurements (a clear night)
        assert pc["transparency"]["low"] is False and image.quality_flag == "good"
    dzp, err = np.array(dzp), np.array(err)
    # measured: -0.016, -0.011, +0.003, +0.004, -0.007, -0.023 (median -0.009), zp_err 0.009; the
    # aperture method on this night is 0.05-0.11 mag off (neighbours in the 4-FWHM aperture)
    assert abs(np.median(dzp)) < 0.02
    assert np.all(np.abs(dzp) < 0.02 + 3 * err)
    assert abs(np.mean(colour) - summary["colour_term"]) < 0.02  # measured 0.032 vs 0.030


def test_crowded_psf_fluxes_against_apertures_and_truth(crowded):
    night, repo = crowded
    images = _images(repo)
    grouped_ratios = []
    for image, stars in zip(images, night.truth.light_stars, strict=True):
        pc = image.photcal
        phot = read_table(repo.root / pc["path"])
        for col in ("flux_ap0", "flux_ap3", "flags_ap3", "mag_inst_ap", "psf_flags", "group_size"):
            assert col in phot.colnames
        # the Measurement rows carry the PSF flux, FORCED still means 'no detection matched'
        meas = repo.measurements(image_id=image.id)
        order = np.argsort(np.asarray(meas["source_id"]))
        assert np.array_equal(np.asarray(meas["source_id"])[order], np.sort(np.asarray(phot["source_id"])))
        by_src = np.argsort(np.asarray(phot["source_id"]))
        np.testing.assert_allclose(
            np.asarray(meas["flux"])[order], np.asarray(phot["flux"])[by_src], rtol=1e-9
        )
        forced = np.asarray(phot["forced"], bool)
        assert np.array_equal((np.asarray(phot["flags"]) & int(PhotFlag.FORCED)) != 0, forced)
        assert 0 < forced.sum() < len(phot)

        dist, true, others = _truth_match(stars, phot)
        ref, big = int(pc["ref_aperture"]), int(np.argmax(pc["aperture_radii_pix"]))
        flux = np.asarray(phot["flux"], float)
        f_ref = np.asarray(phot[f"flux_ap{ref}"], float)
        f_big = np.asarray(phot[f"flux_ap{big}"], float)
        snr = f_ref / np.asarray(phot[f"flux_err_ap{ref}"], float)
        bad = int(PhotFlag.SAT | PhotFlag.TRUNCATED | PhotFlag.NON_POSITIVE)
        clean = (dist < 0.5) & ((np.asarray(phot[f"flags_ap{big}"]) & bad) == 0)
        # bright isolated stars (true neighbours within 12 pixels < 3 % of the flux): the PSF flux
        # equals the aperture flux corrected to the 4-FWHM aperture (the correction measured on these
        # stars) -- measured 0.993-1.000 -- and the true flux (measured 0.994-1.003)
        iso = clean & (snr > 50) & (others < 0.03)
        assert iso.sum() >= 5
        apcorr = np.median(f_big[iso] / f_ref[iso])
        assert abs(np.median(flux[iso] / (f_ref[iso] * apcorr)) - 1) < 0.02
        assert abs(np.median(flux[iso] / true[iso]) - 1) < 0.015
        # bright stars fitted in a group, bright by their own S/N (true flux over the aperture's
        # error): the PSF flux within 2 % of the truth (20-23 stars a frame). The aperture's S/N would count the neighbours'
        # light: a quarter of such picks are faint stars beside much brighter ones, whose PSF fluxes
        # scatter 0.07-2.6 times the truth and pull the median by ~1 %.
        in_group = np.asarray(phot["group_size"]) > 1
        own_snr = true / np.asarray(phot[f"flux_err_ap{ref}"], float)
        grouped = clean & (own_snr > 30) & in_group
        assert grouped.sum() >= 20
        # (measured 0.986-0.999 a frame, the same in every run since photutils' group-model cache
        # is emptied between frames: before, a frame's groups could be fitted with an earlier
        # frame's PSF and the ratios moved by up to 2.5 % from run to run)
        assert abs(np.median(flux[grouped] / true[grouped]) - 1) < 0.02
        grouped_ratios.append(flux[grouped] / true[grouped])
        # blended stars (grouped, own S/N > 10, the neighbours within 12 px brighter than the star
        # itself): the 4-FWHM aperture collects 2.4-2.9 times the star's flux (2.7-3.1 denoised)
        blended = clean & (own_snr > 10) & in_group & (others > 1.0)
        assert blended.sum() >= 20
        assert np.median(f_big[blended] / true[blended]) > 1.5
        # the 5-sigma limit from the PSF fit's sky noise: sources at PSF S/N 4-6.5 sit around it
        # (measured 0.14-0.20 mag brighter, limits 19.64-19.67; the aperture method's: 18.91-18.99)
        psf_snr = np.asarray(meas["flux"]) / np.asarray(meas["flux_err"])
        near = (psf_snr > 4) & (psf_snr < 6.5)
        assert near.sum() >= 50
        assert abs(np.median(np.asarray(meas["mag"])[near]) - pc["mag_limit"]) < 0.35
    assert abs(np.median(np.concatenate(grouped_ratios)) - 1) < 0.02


# ----------------------------------------------------------------------------- a small registry


def _add_provenances(s) -> None:
    """The provenance rows a hand-built registry's images, sources and measurements refer to."""
    for pid, stage in (
        ("calprov", "calibrate"),
        ("extprov", "extract"),
        ("qualprov", "quality"),
        ("astprov", "astrometry"),
        ("assocprov", "associate"),
        ("photprov", "photometry"),
    ):
        s.add(Provenance(id=pid, stage=stage, params={}, code_version="0", upstream=[]))
    s.flush()


def _add_light_image(
    s,
    k: int,
    mjd: float,
    *,
    prefix: str,
    meta: dict,
    fwhm_pix: float = 3.0,
    quality: tuple[str, str | None] | None = None,
    measured: bool = False,
) -> int:
    """One V-band light exposure of field F, its calibrated image and products (a source catalogue
    with the FWHM; ``quality`` = (flag, reason); ``measured``: solved, associated and calibrated);
    returns the image id."""
    exp = Exposure(
        sha256=f"{k:064d}", path=f"/raw/{prefix}{k}.fits", size_bytes=1, frame_type="light", filter="V",
        mjd_mid=float(mjd), meta=meta,
    )  # fmt: skip
    s.add(exp)
    s.flush()
    im = Image(
        exposure_id=exp.id, provenance_id="calprov", path=f"images/{prefix}{k}.fits", sha256="x", filter="V",
        mjd_mid=float(mjd), field="F",
    )  # fmt: skip
    s.add(im)
    s.flush()
    s.add(SourceCatalog(image_id=im.id, provenance_id="extprov", path=f"catalogs/{prefix}{k}.parquet",
                        values={"fwhm_pix": fwhm_pix}))  # fmt: skip
    if quality is not None:
        s.add(ImageQuality(image_id=im.id, provenance_id="qualprov", flag=quality[0], reason=quality[1]))
    if measured:
        s.add(AstromSolution(image_id=im.id, provenance_id="astprov", flag="good"))
        s.add(Association(image_id=im.id, provenance_id="assocprov", field="F"))
        s.add(PhotCal(image_id=im.id, provenance_id="photprov", flag="instrumental"))
    s.flush()
    return im.id


def _small_registry(tmp_path) -> tuple[Repository, dict]:
    """Two sources on five images inserted by hand, images in shuffled time order."""
    repo = Repository.init(tmp_path / "small")
    mjds = [60000.30, 60000.10, 60000.50, 60000.20, 60000.40]
    with repo.registry.session() as s:
        _add_provenances(s)
        site = {"site_lat_deg": 32.78, "site_lon_deg": -105.82, "site_height_m": 2788.0}
        ids = [_add_light_image(s, k, mjd, prefix="f", meta=site) for k, mjd in enumerate(mjds)]
        srcs = [
            Source(
                provenance_id="assocprov",
                field="F",
                ra_deg=150.0,
                dec_deg=2.0,
                n_epochs=5,
                mean_mag={"V": 12.0},
            ),
            Source(
                provenance_id="assocprov",
                field="F",
                ra_deg=150.01,
                dec_deg=2.0,
                n_epochs=5,
                mean_mag={"V": 12.5},
            ),
        ]
        s.add_all(srcs)
        s.flush()
        sid = [x.id for x in srcs]
    flux = {sid[0]: [100.0, 200.0, 300.0, 400.0, 500.0], sid[1]: [7.0] * 5}
    cols = {
        "source_id": np.repeat(sid, 5),
        "image_id": np.tile(ids, 2),
        "provenance_id": "photprov",
        "x": np.full(10, 10.0),
        "y": np.full(10, 20.0),
        "ra_deg": np.repeat([150.0, 150.01], 5),
        "dec_deg": np.full(10, 2.0),
        "flux": np.concatenate([flux[sid[0]], flux[sid[1]]]),
        "flux_err": np.full(10, 1.0),
        "mjd_mid": np.tile(mjds, 2),
    }
    insert_measurements(repo.registry, cols)
    return repo, {"sources": sid, "images": ids, "mjds": mjds}


def test_small_registry_lightcurve_has_only_the_source_rows_in_time_order(tmp_path):
    repo, info = _small_registry(tmp_path)
    from darkroom.pipeline.queries import LightCurveContext, query_lightcurve

    ctx = LightCurveContext(
        registry=repo.registry,
        root=repo.root,
        settings=LightCurveSettings(),
        targets=(),
        associate_provenance="assocprov",
        photometry_provenance="photprov",
    )
    lc = query_lightcurve(ctx, ra_deg=150.0, dec_deg=2.0 + 0.5 / 3600, radius_arcsec=2.0)
    assert set(lc["source_id"]) == {info["sources"][0]}
    order = np.argsort(info["mjds"])
    assert list(lc["image_id"]) == [info["images"][i] for i in order]
    assert list(lc["flux"]) == [[100.0, 200.0, 300.0, 400.0, 500.0][i] for i in order]
    assert np.all(np.diff(lc["bjd_tdb"]) > 0) and np.all(np.isfinite(lc["airmass"]))
    with pytest.raises(BadInputError, match="no source within"):
        query_lightcurve(ctx, ra_deg=150.0, dec_deg=2.01, radius_arcsec=2.0)
    with pytest.raises(BadInputError, match="one of"):
        query_lightcurve(ctx, ra_deg=150.0, dec_deg=2.0, name="x")
    # the Repository face: its own configuration's provenances have no rows here, so the
    # query falls back to the latest photometry that measured the source
    meas = repo.measurements(source_id=info["sources"][1], provenance_id="photprov")
    assert len(meas) == 5 and np.all(np.diff(meas["mjd_utc"]) > 0)
    with repo.registry.session() as s:
        s.add(Provenance(id="otherphot", stage="photometry", params={}, code_version="0", upstream=[]))
    lc2 = repo.lightcurve(source_id=info["sources"][0])
    assert list(lc2["flux"]) == list(lc["flux"]) and lc2.meta["photometry_provenance"] == "photprov"
    repo.close()


def _cloudy_registry(tmp_path) -> tuple[Repository, list[int]]:
    """Ten stars on eight images inserted by hand; clouds take image 3 to 0.50 and image 6 to 0.60
    of clear. Image 6 is poor already (its FWHM), image 7 has no quality flag (quality not run)."""
    repo = Repository.init(tmp_path / "cloudy")
    n_img, n_src = 8, 10
    clouds = np.ones(n_img)
    clouds[[3, 6]] = [0.5, 0.6]
    mjds = 60000.1 + np.arange(n_img) / 1440.0
    with repo.registry.session() as s:
        _add_provenances(s)
        ids = []
        for k, mjd in enumerate(mjds):
            quality = {6: ("poor", "fwhm_pix 6.1 > 5.0"), 7: None}.get(k, ("good", None))
            ids.append(
                _add_light_image(
                    s,
                    k,
                    mjd,
                    prefix="c",
                    meta={"site_lat_deg": 32.78, "site_lon_deg": -105.82},
                    quality=quality,
                    measured=True,
                )
            )
        srcs = [
            Source(provenance_id="assocprov", field="F", ra_deg=150.0 + 0.01 * j, dec_deg=2.0, n_epochs=n_img,
                   mean_mag={"V": 12.0 + 0.2 * j})
            for j in range(n_src)
        ]  # fmt: skip
        s.add_all(srcs)
        s.flush()
        sid = [x.id for x in srcs]
    base = 1e5 * 10 ** (-0.08 * np.arange(n_src))
    flux = (
        clouds[:, None]
        * base[None, :]
        * (1 + 0.002 * np.random.default_rng(4).standard_normal((n_img, n_src)))
    )
    insert_measurements(
        repo.registry,
        {
            "source_id": np.tile(sid, n_img),
            "image_id": np.repeat(ids, n_src),
            "provenance_id": "photprov",
            "x": np.full(flux.size, 10.0),
            "y": np.full(flux.size, 20.0),
            "ra_deg": np.tile([150.0 + 0.01 * j for j in range(n_src)], n_img),
            "dec_deg": np.full(flux.size, 2.0),
            "flux": flux.ravel(),
            "flux_err": np.sqrt(flux.ravel()),
            "flags": np.zeros(flux.size, np.int64),
            "mjd_mid": np.repeat(mjds, n_src),
        },
    )
    return repo, ids


def _quality_state(repo: Repository) -> dict[int, tuple]:
    with repo.registry.session() as s:
        return {r.image_id: (r.provenance_id, r.flag, r.reason) for r in s.scalars(sa.select(ImageQuality))}


def test_lightcurves_stage_flags_cloudy_frames_and_never_edits_the_quality_verdict(tmp_path):
    repo, ids = _cloudy_registry(tmp_path)
    before = _quality_state(repo)
    stage = LightCurvesStage(repo.root, LightCurveSettings(), upstream=("qualprov", "assocprov", "photprov"))
    report = run_stage(repo.registry, stage)
    assert report.n_done == 1 and report.n_failed == 0
    with repo.registry.session() as s:
        trans = {r.image_id: r for r in s.scalars(sa.select(Transparency))}
        assert all(r.provenance_id == stage.provenance_id for r in trans.values())
        poor = poor_image_ids(s, quality=["qualprov"], transparency=[stage.provenance_id])
        poor_quality_only = poor_image_ids(s, quality=["qualprov"])
    assert [k for k, i in enumerate(ids) if trans[i].flag == "poor"] == [3, 6]
    assert abs(trans[ids[3]].values["of_clear"] - 0.5) < 0.01
    assert abs(trans[ids[6]].values["of_clear"] - 0.6) < 0.01
    assert trans[ids[3]].reason == "low transparency (0.50 of clear)"
    # "poor frame" is a query over quality and transparency; the quality rows are untouched
    assert _quality_state(repo) == before
    assert poor == {
        ids[3]: "low transparency (0.50 of clear)",
        ids[6]: "fwhm_pix 6.1 > 5.0; low transparency (0.60 of clear)",
    }
    assert poor_quality_only == {ids[6]: "fwhm_pix 6.1 > 5.0"}
    with repo.registry.session() as s:
        assert stage.plan(s) == []
    # forget is a DELETE by provenance: transparency rows go, the quality verdict stays
    with repo.registry.session() as s:
        stage.forget(s)
    with repo.registry.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Transparency)) == 0
        (unit,) = stage.plan(s)
    assert _quality_state(repo) == before
    # the plan hands the quality stage's verdict to run: only image 6 is poor before transparency
    assert list(np.flatnonzero(unit.payload["frames"]["poor"])) == [6]
    repo.close()


def test_frame_transparency_flags_a_cloudy_frame_and_the_default_curve_drops_it():
    rng = np.random.default_rng(3)
    n_img, n_src = 12, 8
    clouds = np.ones(n_img)
    clouds[[4, 9]] = [0.5, 0.7]
    base = np.geomspace(1e5, 1e4, n_src)
    flux = base[None, :] * clouds[:, None] * (1 + 0.002 * rng.standard_normal((n_img, n_src)))
    img, src = np.meshgrid(np.arange(n_img), np.arange(n_src), indexing="ij")
    meas = Table(
        {
            "image_id": img.ravel(),
            "source_id": src.ravel(),
            "flux": flux.ravel(),
            "flux_err": np.sqrt(flux.ravel()),
            "flags": np.zeros(flux.size, np.int64),
            "mjd_utc": 60000.0 + img.ravel() / 1440.0,
            "filter": np.full(flux.size, "r"),
            "x": np.full(flux.size, 5.0),
            "y": np.full(flux.size, 5.0),
        }
    )
    frames = Table(
        {
            "image_id": np.arange(n_img),
            "mjd_utc": 60000.0 + np.arange(n_img) / 1440.0,
            "filter": np.full(n_img, "r"),
            "fwhm": np.full(n_img, 3.0),
            "zp": np.full(n_img, np.nan),
            "poor": np.zeros(n_img, bool),
        }
    )
    settings = LightCurveSettings()
    value, low = frame_transparency(meas, frames, n_stars=5, config=settings.frame_transparency)
    np.testing.assert_allclose(value / np.median(value), clouds, atol=0.01)
    assert list(np.flatnonzero(low)) == [4, 9]
    lc = assemble_lightcurve(
        meas, frames, target_id=0, ra_deg=150.0, dec_deg=2.0, location=None, settings=settings
    )
    assert 4 not in lc["image_id"] and 9 not in lc["image_id"] and len(lc) == n_img - 2
    kept = assemble_lightcurve(
        meas,
        frames,
        target_id=0,
        ra_deg=150.0,
        dec_deg=2.0,
        location=None,
        settings=settings,
        keep_flagged=True,
    )
    flagged = kept[np.isin(kept["image_id"], [4, 9])]
    assert len(kept) == n_img and np.all(flagged["flags"] & int(LightCurveFlag.LOW_TRANSPARENCY))
    np.testing.assert_allclose(lc["rel_flux"], 1.0, atol=0.01)


def test_stages_pickle_for_dask_workers(sim):
    import pickle

    _, repo = sim
    stages = all_stages(repo.root, repo.config)[-3:]
    for stage in stages:
        clone = pickle.loads(pickle.dumps(stage))
        assert clone.provenance_id == stage.provenance_id and clone.name == stage.name
    from sqlalchemy.orm import Session

    with Session(repo.registry.engine) as s:  # rolled back: one image looks unmeasured
        image = s.scalars(sa.select(Image).order_by(Image.mjd_mid)).first()
        s.execute(
            sa.delete(PhotCal).where(
                PhotCal.image_id == image.id, PhotCal.provenance_id == stages[1].provenance_id
            )
        )
        s.flush()
        units = stages[1].plan(s)
        image_id = image.id
        s.rollback()
    assert [u.payload["image_id"] for u in units] == [image_id]
    result = pickle.loads(pickle.dumps(stages[1])).run(pickle.loads(pickle.dumps(units[0])))
    assert result["image_id"] == image_id and len(result["columns"]["flux"]) > 300
    meas = repo.measurements(image_id=image_id)
    np.testing.assert_array_equal(np.sort(result["columns"]["source_id"]), np.sort(meas["source_id"]))


@pytest.mark.parametrize("night", ["sim", "crowded"])
def test_photometry_products_unchanged_by_the_faster_stage(night, request, photometry_before_and_after):
    """Issue 15 (speed, nothing changes in the products): a simulated night's Parquet files, light
    curves and registry rows (aperture photometry with zero points; PSF photometry of a crowded
    field) are the same, byte for byte and value for value, with the stage's earlier code paths."""
    _, repo = request.getfixturevalue(night)
    before, after = photometry_before_and_after(repo)
    assert sum(p.endswith(".phot.parquet") for p in after["files"]) == len(_images(repo))
    assert len(after["rows"]["measurement"]) > 1000
    assert before["files"].keys() == after["files"].keys()
    assert [p for p in after["files"] if before["files"][p] != after["files"][p]] == []
    assert before["rows"] == after["rows"]
