"""The ARCSAT XO-1 night coadded by the coadd stage (real data, MANIFEST known answers).

The night's repository is the session's calibrated one (tests/conftest.py); the later
stages are the same (same provenance) as the light-curve test's, so whichever test runs
second reuses their products. The good frames (quality flag good after the clouds and
the focus trouble are flagged) are coadded; the coadd's stars must be as sharp as the
median single frame (alignment); the random part of its limit (half-difference image) deeper
by 1.25 log10(n_eff) within 0.1 mag, and the whole limit as deep as that less the master dark's
noise, which every frame shares, within 0.1 mag.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from darkroom.pipeline.products import image_products
from darkroom.pipeline.run import all_stages, coadd_family
from darkroom.pipeline.runner import run_stage
from darkroom.repo.models import Coadd, CoaddInput

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # the whole night's chain when run first


@pytest.fixture(scope="module")
def arcsat_coadd(arcsat_calibrated):
    repo, _ = arcsat_calibrated
    for stage in all_stages(repo.root, repo.config):
        run_stage(repo.registry, stage)
    reports = [run_stage(repo.registry, stage) for stage in coadd_family(repo.root, repo.config)]
    with repo.registry.session() as s:
        coadds = s.scalars(select_coadds()).all()
        rows = [
            (c.key, c.path, c.n_inputs, c.exptime_s, c.mjd_start, c.mjd_mid, c.mjd_end, dict(c.values))
            for c in coadds
        ]
        n_inputs = {c.id: len(s.scalars(select_inputs(c.id)).all()) for c in coadds}
        # good frames: quality good, not poor after the clouds, solved with an absolute WCS
        good = sum(
            1
            for im in image_products(s, None)
            if im.quality_flag == "good"
            and not im.poor
            and im.astrom_flag in ("good", "marginal")
            and im.astrom.get("wcs")
        )
    return repo, reports, rows, n_inputs, good


def _master_dark_noise_in_coadd(repo, path, values) -> float:
    """Aperture noise [reference-frame adu] the master dark's own noise leaves in the coadd."""
    from darkroom.astrom.wcscards import wcs_from_cards
    from darkroom.imaging import TargetGrid, detector_noise_in_coadd
    from darkroom.imaging.planes import celestial_wcs

    by_name = {i["name"]: i for i in values["inputs"]}
    with repo.registry.session() as s:
        ims = [im for im in image_products(s, None) if Path(im.path).name in by_name]
        wcs_list = [wcs_from_cards(im.astrom["wcs"]) for im in ims]
        names = [Path(im.path).name for im in ims]
        first = repo.root / ims[0].path
    with repo.registry.session() as s:
        weights = {Path(p).name: w for p, w in s.execute(select_weights(Path(path).stem)).all()}
    h = fits.getheader(first, "SCI")
    assert "dark x 1 subtracted" in str(h["HISTORY"])  # the bias cancels only then
    (dark,) = (repo.root / "calib").rglob(h["DARKCORR"])
    (flat,) = (repo.root / "calib").rglob(h["FLATCORR"])
    variance = fits.getdata(dark, "VAR") / fits.getdata(flat, "SCI") ** 2
    ch = fits.getheader(repo.root / path, "SCI")
    grid = TargetGrid(celestial_wcs(ch), (ch["NAXIS2"], ch["NAXIS1"]))
    d = detector_noise_in_coadd(
        variance,
        wcs_list,
        [weights[nm] for nm in names],
        [by_name[nm]["scale"] for nm in names],
        grid,
        radius_pix=values["limit_radius_pix"],
    )
    return d.sigma_aperture


def select_weights(stem: str):
    from sqlalchemy import select

    from darkroom.repo.models import Image

    return (
        select(Image.path, CoaddInput.weight)
        .join(CoaddInput, CoaddInput.image_id == Image.id)
        .join(Coadd, Coadd.id == CoaddInput.coadd_id)
        .where(Coadd.path.contains(stem))
    )


def select_coadds():
    from sqlalchemy import select

    return select(Coadd).order_by(Coadd.id)


def select_inputs(coadd_id: int):
    from sqlalchemy import select

    return select(CoaddInput).where(CoaddInput.coadd_id == coadd_id)


def test_arcsat_good_frames_coadd_sharp_and_deep(arcsat_coadd):
    repo, reports, rows, n_inputs, good = arcsat_coadd
    assert reports[0].n_failed == 0, reports[0].failures
    assert len(rows) == 1
    key, path, n, exptime, start, mid, end, values = rows[0]
    assert key.startswith("XO1-b:z:")
    assert n == good and n >= 20 and list(n_inputs.values()) == [n]
    assert exptime == pytest.approx(60.0 * n)
    assert start < mid < end and (end - start) * 24 < 2.2
    # photometric scaling: by the stars' flux ratio, or by exposure time with the reason recorded
    # (this field has few bright isolated stars: 25 of 52 frames were scaled by stars)
    by_stars = [i for i in values["inputs"] if i["note"].startswith("flux ratio")]
    assert len(by_stars) >= 20
    assert all(i["note"].startswith(("flux ratio", "stars:")) for i in values["inputs"][1:])
    # alignment: stars as sharp as the median single frame
    assert values["fwhm_pix"] == pytest.approx(values["inputs_fwhm_pix_median"], rel=0.10)
    # depth (empty apertures with a local annulus sky, same radius, coadd's photometric scale).
    # The random part (half-difference image) follows the inverse-variance law: the coadd's
    # variance is the median input's over n_eff = sum w / median w (54.8 for 52 frames).
    # Measured 2.25 mag against 2.17: bilinear resampling lowers the aperture noise of a frame
    # by 5 % (0.05 mag; its PSF is broader by as much, which apertures of fixed radius ignore).
    gain = values["mag_limit"] - values["inputs_mag_limit_median"]
    gain_random = values["mag_limit_random"] - values["inputs_mag_limit_median"]
    law = 1.25 * np.log10(values["n_eff"])
    assert values["n_eff"] == pytest.approx(n, rel=0.15)
    assert abs(gain_random - law) < 0.1, (
        f"random depth gain {gain_random:.3f} mag, 1.25 log10(n_eff) {law:.3f}"
    )
    # The rest is noise fixed on the detector, common to every frame, which does not average
    # down (only the night's 45 px drift spreads it): the sqrt(N) law (2.14 mag for 52 frames)
    # does not hold on this night (measured 1.99). Predicted here from the master dark's VAR
    # plane carried through the frames' WCSs, weights and scales (1.99). That prediction is right
    # by compensation, measured with leave-one-out darks and half-stacks of the lights carried
    # through the same geometry: VAR over-predicts the 5-dark mean's true error (126 against
    # 81 adu^2: this CCD's read noise is correlated between rows), and ~27 adu^2 of the 43 adu^2
    # fixed pattern comes from the lights themselves (z-band fringes or the dome flat's
    # illumination), not from the dark. A denoised master dark (calib.masters.dark_model.method
    # = denoised) gains 2.05, its error 19 adu^2; the lights' own pattern then dominates.
    sigma_det = _master_dark_noise_in_coadd(repo, path, values)
    factor = (
        exptime / fits.getheader(repo.root / path, "SCI")["EXPREF"]
    )  # SCI in units of the reference frame
    sigma_random = values["sigma_aperture_random"] / factor
    expected = gain_random - 1.25 * np.log10(1 + (sigma_det / sigma_random) ** 2)
    common = values["sigma_aperture_common"] / factor
    assert common == pytest.approx(sigma_det, rel=0.25), (common, sigma_det)
    assert abs(gain - expected) < 0.1, (
        f"depth gain {gain:.3f} mag, expected {expected:.3f} with the master dark's noise "
        f"(sigma {sigma_det:.2f} against random {sigma_random:.2f}); sqrt(N) law {2.5 * np.log10(np.sqrt(n)):.3f}"
    )
    with fits.open(repo.root / path) as hdul:
        h = hdul["SCI"].header
        assert h["NCOMBINE"] == n and h["EXPTIME"] == pytest.approx(exptime)
        assert h["MJD-MID"] == pytest.approx(mid) and "IMCMB001" in h
        assert [x.name for x in hdul][1:5] == ["SCI", "MASK", "VAR", "WEIGHT"]
    cat = Table.read(repo.root / values["catalog"])
    assert len(cat) == values["n_sources"] > 50
    assert np.isfinite(cat["mag"]).sum() > 50 and "ra_deg" in cat.colnames
    assert (repo.root / values["thumbnail"]).stat().st_size > 1000


def test_arcsat_coadd_in_the_night_report_and_the_command(arcsat_coadd):
    from typer.testing import CliRunner

    from darkroom.cli import app
    from darkroom.pipeline.report import build_night_reports

    repo, _, rows, _, _ = arcsat_coadd
    night = rows[0][0].split(":")[2]
    (report,) = build_night_reports(repo, nights=[night])
    assert [p.title for p in report.pictures] == ["XO1-b z coadd"]
    assert report.pictures[0].png[:8] == b"\x89PNG\r\n\x1a\n"
    # the command finds the coadd done (same configuration) and lists it
    res = CliRunner().invoke(app, ["coadd", str(repo.root), "--field", "XO1-b", "--quiet"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["coadd", str(repo.root), "--filter", "z"])
    assert res.exit_code == 0 and "XO1-b:z:" in res.output
