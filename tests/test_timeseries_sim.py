"""From simulated frames to a differential light curve: photometry -> association -> light curve.

darkroom.sim renders a night with a transiting host, a sinusoidal variable, seeing and
transparency-free extinction changes and two pointing jumps; its truth (relative flux of
the host, BJD_TDB, airmass) is independent of the code under test. Detection and
calibration are skipped: stars are measured at their true positions on noisy frames.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table, vstack

from darkroom.phot import ApertureConfig, aperture_photometry
from darkroom.phot.match import pixel_to_sky
from darkroom.sim import PointingJump, SimConfig, TransitConfig, VariableConfig, build_scene, light_electrons
from darkroom.timeseries import AssociationConfig, associate, build_lightcurve, site_location

N_FRAMES = 48


def _night() -> tuple[SimConfig, object, Table]:
    cfg = SimConfig(
        shape=(400, 440),
        n_science=N_FRAMES,
        n_bias=0,
        n_dark=0,
        n_flat=0,
        exptime_s=30.0,
        cadence_s=40.0,
        seed=11,
        planet=TransitConfig(depth=0.02, duration_h=0.25, impact_parameter=0.2),
        variable=VariableConfig(r_mag=13.3, amplitude=0.04, period_h=0.4),
        jumps=(PointingJump(frame_index=16, dx_pix=12.0, dy_pix=-8.0), PointingJump(frame_index=32, dx_pix=-20.0, dy_pix=5.0)),
    )  # fmt: skip
    scene = build_scene(cfg)
    rng = np.random.default_rng(1)
    gain, rn = cfg.gain_e_per_adu, cfg.read_noise_e
    parts = []
    for i in range(N_FRAMES):
        image_e, stars = light_electrons(scene, i)
        st = stars[(np.asarray(stars["frac_on_chip"]) > 0.999) & ~np.asarray(stars["saturated"])]
        sci = ((rng.poisson(image_e) + rng.normal(0, rn, image_e.shape)) / gain).astype(np.float32)
        var = ((image_e + rn**2) / gain**2).astype(np.float32)
        fwhm = float(np.median(st["fwhm_pix"]))
        t = aperture_photometry(sci, None, var, st["x"], st["y"], fwhm_pix=fwhm,
                                config=ApertureConfig(radii_fwhm=(1.5,), ref_aperture=0))  # fmt: skip
        t["ra"], t["dec"] = pixel_to_sky(scene.light_wcs(i), t["x"], t["y"])
        t["image_id"] = i
        t["mjd_utc"] = scene.science.jd_utc_mid[i] - 2400000.5
        t["filter"] = "r"
        t["fwhm"] = fwhm
        t["truth_id"] = st["id"]
        parts.append(t)
    return cfg, scene, vstack(parts, metadata_conflicts="silent")


def test_simulated_transit_through_the_chain():
    cfg, scene, meas = _night()
    res = associate(meas, config=AssociationConfig(radius_arcsec=1.0, mag_col="mag_inst"))
    meas["source_id"] = res.source_id
    truth_ids = np.asarray(meas["truth_id"])
    host = int(np.bincount(res.source_id[truth_ids == scene.host_id]).argmax())
    variable = int(np.bincount(res.source_id[truth_ids == scene.variable_id]).argmax())
    assert np.unique(res.source_id[truth_ids == scene.host_id]).size == 1

    site = site_location(cfg.site_lat_deg, cfg.site_lon_deg, cfg.site_height_m)
    host_row = scene.catalog[scene.host_id]
    lc = build_lightcurve(meas, target_id=host, ra_deg=float(host_row["ra_deg"]), dec_deg=float(host_row["dec_deg"]),
                          location=site)  # fmt: skip
    assert len(lc) == N_FRAMES
    # times and airmass against the simulator's own (geocentric BJD, Pickering airmass at the field centre)
    np.testing.assert_allclose(lc["bjd_tdb"], scene.science.bjd_tdb_mid, rtol=0, atol=0.03 / 86400)
    np.testing.assert_allclose(lc["airmass"], scene.science.airmass, atol=0.01)
    # the pointing jumps are seen as three segments
    assert list(np.unique(lc["segment"])) == [0, 1, 2]
    # the variable never enters the ensemble
    comp = lc.meta["comparison"]["r"]
    assert variable not in comp["source_ids"]
    # relative flux follows the true host flux; depth within 10 %
    truth = scene.science.host_rel_flux
    rel = np.asarray(lc["rel_flux"])
    in_tr = truth < 1 - 0.8 * (1 - truth.min())
    out_tr = truth > 0.9999
    assert in_tr.sum() >= 4 and out_tr.sum() >= 10
    depth_true = 1 - np.median(truth[in_tr]) / np.median(truth[out_tr])
    depth = 1 - np.median(rel[in_tr]) / np.median(rel[out_tr])
    assert abs(depth - depth_true) < 0.1 * depth_true
    resid = rel / np.median(rel[out_tr]) - truth
    assert np.std(resid) < 3 * np.median(lc["rel_flux_err"])
