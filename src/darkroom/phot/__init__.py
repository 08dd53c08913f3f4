"""darkroom.phot: aperture photometry, flags, zero points, colour terms and limits.

Pure functions on SCI/MASK/VAR arrays and astropy Tables; see docs/photometry.md.
"""

from darkroom._lazy import lazy_exports

# what each submodule exports; loaded when first asked for (importing a package's settings
# module must not import its algorithms)
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "settings": ["ApertureConfig", "PsfConfig", "ZeroPointConfig"],
        "aperture": ["aperture_photometry", "aperture_radii", "clipped_annulus_stats"],
        "calibrate": [
            "ZeroPointResult",
            "calibrate_photometry",
            "calibrate_with_unit",
            "fit_zero_point",
            "instrumental_magnitude",
            "limiting_flux",
            "limiting_magnitude",
            "ref_columns_for_filter",
        ],
        "flags": ["DEFAULT_BAD_FLAGS", "PhotFlag", "describe_flags"],
        "inject": ["add_gaussian_stars", "noisy_frame"],
        "match": ["match_catalogs", "match_xy", "pixel_to_sky", "sky_to_pixel"],
        "psf": ["build_epsf", "psf_photometry"],
    },
)
