"""darkroom.detect: background, source detection, centroids, PSF/FWHM and image quality.

Positions are 0-based pixel centres (sep); see docs/pixel_conventions.md.
"""

from darkroom._lazy import lazy_exports

# what each submodule exports; loaded when first asked for (importing a package's settings
# module must not import its algorithms)
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "settings": ["BackgroundConfig", "DetectConfig", "QualityConfig", "QualityLimits"],
        "background": ["Background", "estimate_background"],
        "extract": ["CATALOG_COLUMNS", "detect_sources", "gaussian_kernel"],
        "frame": ["FrameExtraction", "extract_frame"],
        "psf": [
            "GaussianFits",
            "MoffatFits",
            "PsfFit",
            "fit_gaussian_stamps",
            "fit_moffat_stamps",
            "measure_psf",
        ],
        "quality": [
            "ImageQuality",
            "flag_poor_frames",
            "measure_image_quality",
            "plot_quality",
            "select_stars",
            "summarize_nights",
        ],
    },
)
