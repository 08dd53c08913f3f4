"""Photometry and zero point on a darkroom.sim frame (Moffat PSF, sky gradient, SIP WCS).

Independent truth: the simulator's photometric model, ``r = r_inst(e/s) + zp_sim - k X +
c (g - r)``. In adu per second this is ``zp = zp_sim - k X - 2.5 log10(gain)``, plus
``2.5 log10(aperture fraction)`` because aperture magnitudes are not corrected to total
(the fraction is measured on the simulator's noise-free image).
"""

from __future__ import annotations

import math

import numpy as np
from astropy.table import Table

from darkroom.phot import ApertureConfig, PhotFlag, ZeroPointConfig, aperture_photometry, calibrate_photometry
from darkroom.phot.match import pixel_to_sky
from darkroom.sim import SimConfig, build_scene, light_electrons

COLOUR_TERM = 0.15


def test_zero_point_and_colour_term_on_a_simulated_frame():
    cfg = SimConfig(
        shape=(1000, 1100), n_science=1, n_bias=0, n_dark=0, n_flat=0, seed=3, colour_term=COLOUR_TERM
    )
    scene = build_scene(cfg)
    image_e, stars = light_electrons(scene, 0)
    rng = np.random.default_rng(0)
    gain, rn = cfg.gain_e_per_adu, cfg.read_noise_e
    sci = ((rng.poisson(image_e) + rng.normal(0, rn, image_e.shape)) / gain).astype(np.float32)
    var = ((image_e + rn**2) / gain**2).astype(np.float32)
    on = np.asarray(stars["frac_on_chip"]) > 0.999
    st = stars[on]
    fwhm = float(np.median(st["fwhm_pix"]))
    apcfg = ApertureConfig(radii_fwhm=(1.0, 2.0), ref_aperture=1)
    phot = aperture_photometry(
        sci, None, var, st["x"], st["y"], fwhm_pix=fwhm, config=apcfg, exptime_s=cfg.exptime_s
    )
    phot["ra"], phot["dec"] = pixel_to_sky(scene.light_wcs(0), phot["x"], phot["y"])

    # aperture fraction of isolated, bright, unsaturated stars on the noise-free image
    truth = aperture_photometry((image_e / gain).astype(np.float32), None, None, st["x"], st["y"], fwhm_pix=fwhm,
                                config=apcfg)  # fmt: skip
    clean = ((np.asarray(truth["flags"]) & PhotFlag.BLENDED) == 0) & ~np.asarray(st["saturated"])
    frac = float(np.median((np.asarray(truth["flux"]) / np.asarray(st["flux_adu"]))[clean]))
    assert 0.9 < frac < 1.0

    cat = scene.catalog
    ref = Table({"ra": cat["ra_deg"], "dec": cat["dec_deg"], "mag": cat["r_mag"], "colour": cat["g_r"]})
    res, out = calibrate_photometry(phot, ref, config=ZeroPointConfig(match_radius_arcsec=1.0))
    airmass = float(scene.science.airmass[0])
    expected = cfg.zero_point_mag - cfg.extinction_mag_per_airmass * airmass - 2.5 * math.log10(gain)
    expected += 2.5 * math.log10(frac)
    assert res.n_used > 80
    assert abs(res.zp - expected) < 0.01
    assert abs(res.colour_term - COLOUR_TERM) < 0.02
    assert res.mag_limit is not None and 17 < res.mag_limit < 25
    assert out.meta["mag_system"] == "calibrated"
