"""Ready-made simulated nights for hard cases."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from darkroom.sim.config import SimConfig, TransitConfig

__all__ = ["hostile_small_telescope"]


def hostile_small_telescope(*, seed: int = 1, n_science: int = 360, **overrides: Any) -> SimConfig:
    """A small robotic telescope's night as a new user gets it, with nothing to help:

    650 x 500 pixels of 5 arcsec, a 12-bit camera (saturation 4095 adu, never written),
    FWHM 1.5-2.2 px, no type keyword, no gain or read noise in the header, DATE-OBS in
    local time with its UTC offset (-07:00), the longitude written west-positive
    (LONGITUD=110.88) with LST-OBS, no calibration frames at all, a field drifting 120 px
    over the 4 h of the night, and a 2.4 % transit of a 12.4 mag host in the middle
    (its core stays below the 12-bit ceiling at the sharpest seeing).
    ``n_science`` frames spread over 4 hours: the default 360 is a 40 s cadence, 30 s
    exposures and a few seconds of read-out, as a small telescope on a transit takes them;
    ``overrides`` replace any field.
    """
    hours = 4.0
    cadence = hours * 3600.0 / max(n_science, 1)
    settings: dict[str, Any] = {
        "seed": seed,
        "shape": (500, 650),
        "header_style": "minimal",
        "utc_offset_h": -7.0,
        "n_bias": 0,
        "n_dark": 0,
        "n_flat": 0,
        "flat_level_adu": (2000.0, 1500.0),
        "n_science": n_science,
        "exptime_s": 30.0,
        "cadence_s": cadence,
        "start_utc": datetime(2025, 6, 2, 4, 0, 0),  # 21:00 local on 1 June
        "object_name": "TOI-sim",
        "site_name": "small-scope",
        "site_lat_deg": 31.68,
        "site_lon_deg": -110.88,
        "site_height_m": 2100.0,
        "ra_deg": 255.0,
        "dec_deg": 30.0,
        "pixel_scale_arcsec": 5.0,
        "pixel_size_um": 9.0,
        "rotation_deg": 1.2,
        "sip_amplitude_pix": 0.3,
        "drift_pix_per_h": (27.0, -13.5),  # 30 px/h: 120 px over the night
        "jitter_pix": 0.3,
        "header_pointing_error_arcsec": 60.0,
        "gain_e_per_adu": 6.0,  # a 12-bit ADC over a ~25 ke- full well
        "read_noise_e": 12.0,
        "bias_level_adu": 100.0,
        "bias_column_rms_adu": 1.0,
        "bias_gradient_adu": 1.0,
        "dark_current_e_s": 0.1,
        "n_hot_pixels": 40,
        # no bad columns: with no calibration frames nothing could find one, and a star
        # drifting across it loses 15 % of its light for a few frames
        "bad_columns": (),
        "saturation_adu": 4095.0,
        "ccd_temp_c": -5.0,
        "vignetting": 0.04,  # no flats to correct it: a small sensor behind a small scope
        "n_dust_rings": 0,
        "sky_e_s": 15.0,
        "seeing_fwhm_arcsec": 9.25,  # 1.85 px
        "seeing_variation": 0.07,
        "seeing_field_variation": 0.03,
        "zero_point_mag": 21.0,
        "extinction_mag_per_airmass": 0.15,
        "n_stars": 1300,
        "r_mag_range": (9.0, 18.5),
        "catalog_margin_pix": 140.0,
        "cosmic_ray_rate_cm2_s": 0.5,
        "planet": TransitConfig(
            host_r_mag=12.4, depth=0.024, duration_h=2.0, impact_parameter=0.3, period_d=3.3
        ),
    }
    settings.update(overrides)
    return SimConfig(**settings)
