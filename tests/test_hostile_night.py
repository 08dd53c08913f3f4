"""A hostile small telescope's night, reduced with no profile and no settings.

The simulator preset :func:`darkroom.sim.hostile_small_telescope` writes what a bare
driver writes: 650 x 500 pixels of 5 arcsec, a 12-bit camera, FWHM 1.5-2.2 px, no type
keyword, no gain or read noise, DATE-OBS in local time with its offset, a west-positive
LONGITUD with LST-OBS, no calibration frames, a field drifting 120 px over 4 h, and a
2.4 % transit. ``darkroom init / ingest / run`` must make every frame a light of one
night, and the host's differential light curve must give the transit depth (asked: within
5 %) and the mid-time within 2 minutes (fitted here with batman),
with no cosmic-ray pixel in the target's aperture.
"""

from __future__ import annotations

import batman
import numpy as np
import pytest
from astropy.io import fits
from scipy.optimize import least_squares
from sqlalchemy import select
from typer.testing import CliRunner

from darkroom.cli import app
from darkroom.facade import Repository
from darkroom.instruments import normalize
from darkroom.maskbits import MaskBit
from darkroom.phot.aperture import aperture_photometry
from darkroom.phot.settings import MeasureSettings
from darkroom.repo.models import Exposure, Image
from darkroom.sim import build_scene, hostile_small_telescope, light_electrons, render_frame, simulate_night
from darkroom.timeseries.illumination import fit_illumination

N_FRAMES = 360  # the preset's own night: 30 s exposures every 40 s for 4 hours
APERTURE_PIX = 3.5  # covers 1.5 x the widest FWHM (2.2 px)


def _fit_transit(t: np.ndarray, flux: np.ndarray, summary: dict) -> tuple[float, float]:
    """(depth = 1 - minimum of the model, mid-time [BJD_TDB]) of a batman fit with free mid-time,
    radius ratio and a linear baseline; the orbit's shape and limb darkening from the truth."""
    tr = summary["transit"]
    params = batman.TransitParams()
    params.t0, params.per, params.rp = tr["t0_bjd_tdb"], tr["period_d"], tr["rp_rs"]
    params.a, params.inc, params.ecc, params.w = tr["a_rs"], tr["inc_deg"], 0.0, 90.0
    params.u, params.limb_dark = [tr["u1"], tr["u2"]], "quadratic"
    t_ref = float(np.median(t))

    def model(p: np.ndarray, times: np.ndarray) -> np.ndarray:
        params.t0, params.rp = t_ref + p[0], p[1]
        shape = batman.TransitModel(params, times).light_curve(params)
        return shape * (p[2] + p[3] * (times - t_ref))

    start = np.array([float(t[np.argmin(flux)]) - t_ref, 0.15, 1.0, 0.0])
    fit = least_squares(lambda p: model(p, t) - flux, start, x_scale=[0.01, 0.01, 0.01, 0.1])
    fine = np.linspace(t.min(), t.max(), 4000)
    params.t0, params.rp = t_ref + fit.x[0], fit.x[1]
    depth = 1.0 - float(batman.TransitModel(params, fine).light_curve(params).min())
    return depth, t_ref + float(fit.x[0])


def test_hostile_headers_are_read_right_with_no_profile():
    scene = build_scene(hostile_small_telescope(n_science=3))
    raw, truth = render_frame(scene, kind="light", index=2)
    assert "IMAGETYP" not in truth.header and "EGAIN" not in truth.header
    meta = normalize(truth.header, filename=truth.spec.filename, shape=raw.shape, data=raw)
    assert (meta.frame_type, meta.type_source) == ("light", "inferred from header")
    assert meta.site_lon_deg == pytest.approx(-110.88) and meta.night == "2025-06-01"
    assert abs((meta.time_start_utc - truth.spec.start_utc).total_seconds()) < 1.0
    assert meta.gain_e_per_adu is None and meta.read_noise_e is None
    assert raw.max() <= 4095


@pytest.mark.slow
def test_hostile_night_reduces_right_with_no_profile_and_no_settings(tmp_path):
    night = simulate_night(tmp_path / "sim", hostile_small_telescope(n_science=N_FRAMES))
    repo_dir = tmp_path / "repo"
    cli = CliRunner()
    for args in (
        ["init", str(repo_dir)],
        ["ingest", str(repo_dir), str(tmp_path / "sim" / "raw")],
        ["run", str(repo_dir)],
    ):
        res = cli.invoke(app, args)
        assert res.exit_code == 0, (args, res.output)

    repo = Repository(repo_dir)
    try:
        with repo.registry.session() as s:
            exposures = s.scalars(select(Exposure)).all()
            images = {i.exposure_id: i for i in s.scalars(select(Image))}
            assert len(exposures) == N_FRAMES
            assert {(e.state, e.frame_type) for e in exposures} == {("ok", "light")}
            assert {e.night for e in exposures} == {"2025-06-01"}  # one local night, west of Greenwich
            meta = exposures[0].meta
            assert meta["site_lon_deg"] == pytest.approx(-110.88)
            assert any("west-positive" in w for w in meta["warnings"])
            assert any("inferred light" in w for w in meta["warnings"])
            assert len(images) == N_FRAMES
            calib = images[exposures[0].id].calib
            assert calib["noise_model"].startswith("noise estimated")
            assert sorted(calib["skipped_masters"]) == ["bias", "dark", "flat"]
            paths = [
                (e.path, repo.path(images[e.id].path)) for e in sorted(exposures, key=lambda e: e.mjd_mid)
            ]

        truth = night.truth
        host = truth.host_id
        first = truth.light_stars[0]
        hx, hy = (float(v) for v in first[first["id"] == host][0]["x", "y"])
        lc = repo.lightcurve(pixel=(hx, hy), frame=paths[0][0], differential=True, keep_flagged=True)
        assert len(lc) >= 0.95 * N_FRAMES
        assert len(set(np.asarray(lc["segment"]))) == 1 if "segment" in lc.colnames else True

        # no cosmic-ray pixel inside the host's aperture, in any frame
        for k, (_, image_path) in enumerate(paths):
            stars = truth.light_stars[k]
            x, y = (float(v) for v in stars[stars["id"] == host][0]["x", "y"])
            mask = fits.getdata(image_path, "MASK")
            yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
            inside = (xx - x) ** 2 + (yy - y) ** 2 <= APERTURE_PIX**2
            assert not np.any(mask[inside] & MaskBit.CR), f"CR pixel in the host aperture, frame {k}"

        t = np.asarray(lc["bjd_tdb"], float)
        flux = np.asarray(lc["rel_flux"], float)
        good = np.isfinite(t) & np.isfinite(flux)
        depth, t0 = _fit_transit(t[good], flux[good] / np.nanmedian(flux[good]), truth.summary)
        true_depth = truth.summary["transit"]["depth"]
        # The preset as it is (seed 1, 360 frames): depth -3.3 %, mid-time +0.7 min. Within 5 % is a
        # ~1.6-sigma test of one realisation, not a bias of the pipeline: six nights of the preset
        # (seeds 1-6, 360 frames, measured 2026-12-04) gave -2.2, +3.0, +2.8, +5.9, -2.0 and -0.9 %
        # (rms 3.2 %). Two parts: (1) photon noise: the host (12.4 mag, ~70 ke-, at the 12-bit
        # ceiling) has 4.5 ppt point-to-point noise, ~2.3 % of the depth over 360 frames; (2) the
        # unflattened pixel response (0.5 % rms) that the drifting stars sample: on noiseless frames
        # it alone moves the depth by -0.0 .. +4.6 % over six realisations of the pattern (std
        # ~1.7 %), and more frames do not average it down (no flats: nothing can remove it; the
        # night-sky flat, calib.sky_flat, measured no better on these nights). The photometry's own
        # systematics on noiseless frames are held at 5 % below.
        assert depth == pytest.approx(true_depth, rel=0.05), (depth, true_depth)
        assert abs(t0 - truth.summary["transit"]["t0_bjd_tdb"]) * 1440.0 < 2.0
    finally:
        repo.close()


def _noiseless_depth(n_frames: int, *, flat: str, illumination: bool = True) -> float:
    """Transit depth of the host over a fixed ensemble, measured with darkroom's default apertures at
    the true positions on noiseless frames of the hostile preset (sky + stars, times nothing with
    ``flat="none"``, the whole flat with ``"full"``: vignetting and the 0.5 % pixel response), with the pipeline's illumination correction (fitted on the field's stars)
    when ``illumination``: the systematic part of the photometry alone (the aperture's share of an
    undersampled star changing with the seeing and across the field; the vignetting sampled by the
    drift), without photon noise."""
    scene = build_scene(hostile_small_telescope(n_science=n_frames, seed=4))
    c, sci, host = scene.config, scene.science, scene.host_id
    aperture = MeasureSettings().aperture
    response = {"none": 1.0, "full": scene.detector.flat}[flat]
    frames, mags = [], {}
    for k in range(n_frames):
        image, stars = light_electrons(scene, k)
        image = image * response
        inner = stars["in_frame"] & ~stars["saturated"]
        inner &= (
            (stars["x"] > 10)
            & (stars["x"] < c.shape[1] - 10)
            & (stars["y"] > 10)
            & (stars["y"] < c.shape[0] - 10)
        )
        stars = stars[inner]
        phot = aperture_photometry(
            image.astype(np.float32),
            None,
            None,
            np.asarray(stars["x"]),
            np.asarray(stars["y"]),
            fwhm_pix=float(sci.fwhm_arcsec[k] / c.pixel_scale_arcsec),
            config=aperture,
        )
        frames.append(
            {
                int(i): (float(f), float(x), float(y))
                for i, f, x, y in zip(stars["id"], phot["flux"], stars["x"], stars["y"], strict=True)
            }
        )
        mags.update(zip(np.asarray(stars["id"]).tolist(), np.asarray(stars["r_mag"], float), strict=True))
    host_mag = mags[host]
    always = sorted(set.intersection(*(set(f) for f in frames)) - {scene.variable_id})
    flux, x, y = (np.array([[f[i][j] for i in always] for f in frames]) for j in range(3))
    if illumination:
        # photon-noise errors of the noiseless fluxes (plus the sky) weight the fit as in the pipeline
        err = np.sqrt(flux + 500.0)
        flux = flux * fit_illumination(flux, err, x, y, exclude=(always.index(host),)).factor
    col = {i: k for k, i in enumerate(always)}
    comps = [col[i] for i in always if i != host and abs(mags[i] - host_mag) < 1.5]
    assert len(comps) >= 5
    ratio = flux[:, col[host]] / flux[:, comps].sum(axis=1)
    g = scene.transit
    summary = {
        "transit": {
            "t0_bjd_tdb": scene.transit_t0_bjd,
            "period_d": g.period_d,
            "rp_rs": g.rp_rs,
            "a_rs": g.a_rs,
            "inc_deg": g.inc_deg,
            "u1": g.u1,
            "u2": g.u2,
        }
    }
    depth, t0 = _fit_transit(np.asarray(sci.bjd_tdb_mid), ratio / np.median(ratio), summary)
    assert abs(t0 - scene.transit_t0_bjd) * 1440.0 < 2.0
    return depth


def test_hostile_photometry_systematics_within_5_percent_without_noise():
    """The issue's 5 % on the depth, for what the photometry itself does to it, without photon
    noise. Measured on 40 frames: -2.8 % with no flat response at all (the aperture's share of an
    undersampled star changes with the seeing and its pixel phase: +-0.5 % frame to frame) and
    +0.1 % through the whole flat (4 % vignetting, which the illumination correction fits, and the
    0.5 % pixel response, which the 120 px drift samples and nothing can remove without flats)."""
    true_depth = hostile_small_telescope().planet.depth
    assert _noiseless_depth(40, flat="none") == pytest.approx(true_depth, rel=0.05)
    assert _noiseless_depth(40, flat="full") == pytest.approx(true_depth, rel=0.05)
