"""darkroom.timeseries: association, light curves, differential photometry, times, quality.

Pure functions on astropy Tables and arrays; see docs/photometry.md.
"""

from darkroom.timeseries.associate import AssociationConfig, AssociationResult, associate, summarise_sources
from darkroom.timeseries.differential import (
    ComparisonConfig,
    DifferentialResult,
    clipped_std,
    differential_photometry,
    pointing_segments,
)
from darkroom.timeseries.lightcurve import (
    LightCurveConfig,
    bin_lightcurve,
    build_lightcurve,
    pivot_measurements,
    point_to_point_scatter,
    read_lightcurve,
    split_lightcurve,
    write_lightcurve,
)
from darkroom.timeseries.plot import plot_lightcurve
from darkroom.timeseries.quality import (
    LightCurveFlag,
    TransparencyConfig,
    reference_level,
    transparency_flags,
)
from darkroom.timeseries.times import airmass, altaz, bjd_tdb, hjd_utc, mid_exposure_mjd, site_location

__all__ = [
    "AssociationConfig",
    "AssociationResult",
    "ComparisonConfig",
    "DifferentialResult",
    "LightCurveConfig",
    "LightCurveFlag",
    "TransparencyConfig",
    "airmass",
    "altaz",
    "associate",
    "bin_lightcurve",
    "bjd_tdb",
    "build_lightcurve",
    "clipped_std",
    "differential_photometry",
    "hjd_utc",
    "mid_exposure_mjd",
    "pivot_measurements",
    "plot_lightcurve",
    "point_to_point_scatter",
    "pointing_segments",
    "read_lightcurve",
    "reference_level",
    "site_location",
    "split_lightcurve",
    "summarise_sources",
    "transparency_flags",
    "write_lightcurve",
]
