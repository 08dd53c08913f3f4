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

from darkroom._lazy import lazy_exports

# what each submodule exports; loaded when first asked for (reading darkroom.yaml imports
# darkroom.imaging.settings alone, not reproject, scipy or sep)
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "settings": ["CoaddConfig", "FluxRatioConfig", "ResampleConfig"],
        "arith": ["ContinuumResult", "FluxRatio", "continuum_subtract", "image_arith", "stellar_flux_ratio"],
        "coadd": ["CoaddInputInfo", "CoaddResult", "coadd_grid", "coadd_images"],
        "depth": ["Depth", "detector_noise_in_coadd", "empty_aperture_depth"],
        "planes": ["ImagePlanes", "planes_to_hdus", "read_planes"],
        "resample": [
            "Resampled",
            "TargetGrid",
            "grid_covering",
            "grid_from_centre",
            "grid_of",
            "resample",
            "resample_many",
        ],
        "rgb": ["RgbConfig", "RgbImage", "make_rgb", "rgb_fits_hdus", "thumbnail", "write_rgb"],
    },
)
