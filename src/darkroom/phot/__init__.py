"""darkroom.phot: aperture photometry, flags, zero points, colour terms and limits.

Pure functions on SCI/MASK/VAR arrays and astropy Tables; see docs/photometry.md.
"""

from darkroom.phot.aperture import ApertureConfig, aperture_photometry, aperture_radii, clipped_annulus_stats
from darkroom.phot.calibrate import (
    ZeroPointConfig,
    ZeroPointResult,
    calibrate_photometry,
    calibrate_with_unit,
    fit_zero_point,
    instrumental_magnitude,
    limiting_flux,
    limiting_magnitude,
    ref_columns_for_filter,
)
from darkroom.phot.flags import DEFAULT_BAD_FLAGS, PhotFlag, describe_flags
from darkroom.phot.inject import add_gaussian_stars, noisy_frame
from darkroom.phot.match import match_catalogs, match_xy, pixel_to_sky, sky_to_pixel
from darkroom.phot.psf import PsfConfig, build_epsf, psf_photometry

__all__ = [
    "DEFAULT_BAD_FLAGS",
    "ApertureConfig",
    "PhotFlag",
    "PsfConfig",
    "ZeroPointConfig",
    "ZeroPointResult",
    "add_gaussian_stars",
    "aperture_photometry",
    "aperture_radii",
    "build_epsf",
    "calibrate_photometry",
    "calibrate_with_unit",
    "clipped_annulus_stats",
    "describe_flags",
    "fit_zero_point",
    "instrumental_magnitude",
    "limiting_flux",
    "limiting_magnitude",
    "match_catalogs",
    "match_xy",
    "noisy_frame",
    "pixel_to_sky",
    "psf_photometry",
    "ref_columns_for_filter",
    "sky_to_pixel",
]
