"""darkroom.detect: background, source detection, centroids, PSF/FWHM and image quality.

Positions are 0-based pixel centres (sep); see docs/pixel_conventions.md.
"""

from darkroom.detect.background import Background, BackgroundConfig, estimate_background
from darkroom.detect.extract import CATALOG_COLUMNS, DetectConfig, detect_sources, gaussian_kernel
from darkroom.detect.frame import FrameExtraction, extract_frame
from darkroom.detect.psf import (
    GaussianFits,
    MoffatFits,
    PsfFit,
    fit_gaussian_stamps,
    fit_moffat_stamps,
    measure_psf,
)
from darkroom.detect.quality import (
    ImageQuality,
    QualityConfig,
    QualityLimits,
    flag_poor_frames,
    measure_image_quality,
    plot_quality,
    select_stars,
    summarize_nights,
)

__all__ = [
    "CATALOG_COLUMNS",
    "Background",
    "BackgroundConfig",
    "DetectConfig",
    "FrameExtraction",
    "GaussianFits",
    "ImageQuality",
    "MoffatFits",
    "PsfFit",
    "QualityConfig",
    "QualityLimits",
    "detect_sources",
    "estimate_background",
    "extract_frame",
    "fit_gaussian_stamps",
    "fit_moffat_stamps",
    "flag_poor_frames",
    "gaussian_kernel",
    "measure_image_quality",
    "measure_psf",
    "plot_quality",
    "select_stars",
    "summarize_nights",
]
