"""darkroom.timeseries: association, light curves, differential photometry, times, quality.

Pure functions on astropy Tables and arrays; see docs/photometry.md.
"""

from darkroom._lazy import lazy_exports

# what each submodule exports; loaded when first asked for (importing a package's settings
# module must not import its algorithms)
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "settings": ["ComparisonConfig", "LightCurveConfig", "TransparencyConfig"],
        "associate": ["AssociationConfig", "AssociationResult", "associate", "summarise_sources"],
        "differential": ["DifferentialResult", "clipped_std", "differential_photometry", "pointing_segments"],
        "lightcurve": [
            "bin_lightcurve",
            "build_lightcurve",
            "pivot_measurements",
            "point_to_point_scatter",
            "read_lightcurve",
            "split_lightcurve",
            "write_lightcurve",
        ],
        "plot": ["plot_lightcurve"],
        "quality": ["LightCurveFlag", "reference_level", "transparency_flags"],
        "times": ["airmass", "altaz", "bjd_tdb", "hjd_utc", "mid_exposure_mjd", "site_location"],
    },
)
