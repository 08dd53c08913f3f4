"""A coadd is an image: extracted, solved and calibrated like the night's frames (simulated night).

Simulated night (darkroom.sim, 400 x 480 pixels, 8 frames of 30 s, no header WCS, its reference
catalogue configured for astrometry and photometry) through every stage, then the coadd stage.
The checks use the simulator's truth, which does not come from the code under test:

* the coadd's WCS is refined against the reference catalogue (not only carried over from the
  inputs' solutions) and puts the catalogue's stars where the coadd's sources are;
* its zero point is fitted on the coadd's own stars against the catalogue and equals the true
  zero point of the reference (first) input, whose count rate SCI / EXPTIME is
  (``zero_point_mag - k X - 2.5 log10(gain)`` in darkroom's convention, per adu/s);
* the coadd catalogue's magnitudes of bright stars match the catalogue's.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from sqlalchemy import select

from darkroom.facade import Repository
from darkroom.pipeline.ingest import ingest_paths
from darkroom.pipeline.run import all_stages, coadd_family
from darkroom.pipeline.runner import run_stage
from darkroom.repo.models import Coadd
from darkroom.sim import SimConfig, simulate_night

SIM = SimConfig(
    seed=11, shape=(400, 480), n_science=8, n_bias=3, n_dark=3, n_flat=3, exptime_s=30.0, cadence_s=40.0
)


def _overrides() -> list[str]:
    epoch = Time(SIM.start_utc).jyear  # the refcat's epoch is the first frame's
    return [
        "astrometry.solve.reference_catalog.kind=file",
        "astrometry.solve.reference_catalog.path=refcat.ecsv",
        "astrometry.solve.reference_catalog.columns={ra: ra_deg, dec: dec_deg, mag: r_mag, pmra: pmra_mas_yr, "
        f"pmdec: pmdec_mas_yr, source_id: source_id, epoch_jyear: {epoch:.5f}}}",
        "photometry.measure.ref_mag_column=r_mag",
        "photometry.measure.ref_colour_columns=[g_mag, r_mag]",
    ]


@pytest.fixture(scope="module")
def sim_coadd(tmp_path_factory):
    base = tmp_path_factory.mktemp("sim_coadd")
    night = simulate_night(base / "night", config=SIM)
    repo = Repository.init(base / "repo", overrides=_overrides())
    shutil.copy(night.refcat_path, repo.root / "refcat.ecsv")
    ingest_paths(repo.registry, [p for paths in night.raw_paths.values() for p in paths])
    for stage in all_stages(repo.root, repo.config):
        run_stage(repo.registry, stage)
    reports = [run_stage(repo.registry, stage) for stage in coadd_family(repo.root, repo.config)]
    with repo.registry.session() as s:
        rows = [(c.path, c.n_inputs, dict(c.values)) for c in s.scalars(select(Coadd)).all()]
    yield night, repo, reports, rows
    repo.close()


def test_coadd_is_solved_and_calibrated_like_a_frame(sim_coadd):
    night, repo, reports, rows = sim_coadd
    assert reports[0].n_failed == 0, reports[0].failures
    ((path, n, values),) = rows
    assert n == SIM.n_science
    # astrometry: the inputs' grid checked and refined against the catalogue
    astrom = values["astrometry"]
    assert astrom["method"] == "header_refined" and astrom["quality"] == "good", astrom
    assert astrom["n_matched"] >= 20 and astrom["rms_arcsec"] < 0.1
    header = fits.getheader(repo.root / path, "SCI")
    assert header["ASTQUAL"] == "good" and any("WCS header_refined" in h for h in header["HISTORY"])
    cat = Table.read(repo.root / values["catalog"])
    ref = Table.read(night.refcat_path)
    src = SkyCoord(np.asarray(cat["ra_deg"]) * u.deg, np.asarray(cat["dec_deg"]) * u.deg)
    truth = SkyCoord(np.asarray(ref["ra_deg"]) * u.deg, np.asarray(ref["dec_deg"]) * u.deg)
    idx, sep, _ = src.match_to_catalog_sky(truth)
    matched = sep.arcsec < 1.0
    bright = matched & (np.asarray(ref["r_mag"])[idx] < 17.5) & ~np.asarray(cat["sharp"], bool)
    assert bright.sum() >= 20
    assert np.median(sep.arcsec[bright]) < 0.1
    # photometry: the coadd's own zero point against the catalogue = the reference input's truth
    pc = values["photcal"]
    assert pc["mag_system"] == "calibrated" and pc["n_used"] >= 20, pc
    assert values["zp_source"].startswith("catalog")
    summary = night.truth.summary
    first = night.truth.frames[night.truth.frames["kind"] == "light"][0]
    true_zp = (
        summary["zero_point_mag"]
        - summary["extinction_mag_per_airmass"] * first["airmass"]
        - 2.5 * math.log10(summary["gain_e_per_adu"])
    )
    assert values["zp"] == pytest.approx(true_zp, abs=0.02 + 3 * pc["zp_err"])
    assert header["MAGZP"] == pytest.approx(values["zp"])
    # magnitudes (the colour term applied with each star's catalogue colour): bright stars as the
    # catalogue has them
    resid = np.asarray(cat["mag"], float)[bright] - np.asarray(ref["r_mag"], float)[idx[bright]]
    assert abs(np.median(resid)) < 0.02 and 1.4826 * np.median(np.abs(resid - np.median(resid))) < 0.05
