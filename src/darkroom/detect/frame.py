"""One call for a frame: background, sources and image quality."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from darkroom.detect.background import Background, BackgroundConfig, estimate_background, pixel_masks
from darkroom.detect.extract import DetectConfig, detect_sources
from darkroom.detect.quality import ImageQuality, QualityConfig, measure_image_quality

__all__ = ["FrameExtraction", "extract_frame"]


@dataclass(frozen=True)
class FrameExtraction:
    """What :func:`extract_frame` returns."""

    catalog: Table  #: sources, 0-based (x, y); see darkroom.detect.extract.CATALOG_COLUMNS
    background: Background  #: level and rms maps [adu]
    quality: ImageQuality  #: FWHM, ellipticity, sky, counts


def extract_frame(
    data: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    background_config: BackgroundConfig | None = None,
    detect_config: DetectConfig | None = None,
    quality_config: QualityConfig | None = None,
    saturation_adu: float | None = None,
    gain_e_per_adu: float | None = None,
    pixel_scale_arcsec: float | None = None,
) -> FrameExtraction:
    """Background, source catalog and image-quality figures of one image ``(ny, nx)`` [adu].

    ``mask`` is the MASK bit plane (or a boolean bad-pixel array); see
    :func:`~darkroom.detect.estimate_background` and :func:`~darkroom.detect.detect_sources`
    for what each step does with it.
    """
    background_config = background_config or BackgroundConfig()
    detect_config = detect_config or DetectConfig()
    # the bad and saturated pixels of both steps, with one pass over the image and the mask
    masks = pixel_masks(data, mask, background_config.mask_bits, detect_config.mask_bits)
    background = estimate_background(data, config=background_config, masks=masks)
    catalog = detect_sources(
        data,
        background=background,
        config=detect_config,
        saturation_adu=saturation_adu,
        gain_e_per_adu=gain_e_per_adu,
        masks=masks,
    )
    quality = measure_image_quality(
        catalog, background, pixel_scale_arcsec=pixel_scale_arcsec, config=quality_config
    )
    return FrameExtraction(catalog=catalog, background=background, quality=quality)
