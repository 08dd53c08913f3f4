"""darkroom.imaging: image products built on reproject and astropy, SCI/MASK/VAR carried.

* :mod:`~darkroom.imaging.resample`: target grids (another image's, a common tangent plane
  covering several, or centre/scale/size/rotation) and resampling with MASK, VAR, footprint;
* :mod:`~darkroom.imaging.coadd`: background-matched, flux-scaled, inverse-variance
  weighted, sigma-clipped coadds with VAR, weight, exposure maps and the time span;
* :mod:`~darkroom.imaging.arith`: image arithmetic, stellar flux ratios, continuum subtraction;
* :mod:`~darkroom.imaging.rgb`: Lupton et al. colour composites, thumbnails;
* :mod:`~darkroom.imaging.depth`: empty-aperture noise and limiting magnitudes;
* :mod:`~darkroom.imaging.planes`: :class:`ImagePlanes` and FITS reading/writing.

Pure algorithms: arrays, headers and WCS in, plain results out (no registry).
Pixel positions 0-based (sep convention), shapes ``(ny, nx)``.
"""

from darkroom.imaging.arith import (
    ContinuumResult,
    FluxRatio,
    FluxRatioConfig,
    continuum_subtract,
    image_arith,
    stellar_flux_ratio,
)
from darkroom.imaging.coadd import CoaddConfig, CoaddInputInfo, CoaddResult, coadd_grid, coadd_images
from darkroom.imaging.depth import Depth, detector_noise_in_coadd, empty_aperture_depth
from darkroom.imaging.planes import ImagePlanes, planes_to_hdus, read_planes
from darkroom.imaging.resample import (
    ResampleConfig,
    Resampled,
    TargetGrid,
    grid_covering,
    grid_from_centre,
    grid_of,
    resample,
    resample_many,
)
from darkroom.imaging.rgb import RgbConfig, RgbImage, make_rgb, rgb_fits_hdus, thumbnail, write_rgb

__all__ = [
    "CoaddConfig",
    "CoaddInputInfo",
    "CoaddResult",
    "ContinuumResult",
    "Depth",
    "FluxRatio",
    "FluxRatioConfig",
    "ImagePlanes",
    "ResampleConfig",
    "Resampled",
    "RgbConfig",
    "RgbImage",
    "TargetGrid",
    "coadd_grid",
    "coadd_images",
    "continuum_subtract",
    "detector_noise_in_coadd",
    "empty_aperture_depth",
    "grid_covering",
    "grid_from_centre",
    "grid_of",
    "image_arith",
    "make_rgb",
    "planes_to_hdus",
    "read_planes",
    "resample",
    "resample_many",
    "rgb_fits_hdus",
    "stellar_flux_ratio",
    "thumbnail",
    "write_rgb",
]
