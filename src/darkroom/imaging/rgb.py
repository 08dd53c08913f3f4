"""Colour composites (Lupton et al. 2004 asinh stretch) and thumbnails.

Three images of any filters are put on one grid (the ``reference`` image's: the others are
resampled onto it), their backgrounds removed (sigma-clipped median), each scaled by a
balance factor (by default so that the median of the stars' fluxes is the same in the three
planes: a neutral grey for a typical star) and stretched together with astropy's
:func:`~astropy.visualization.make_lupton_rgb`, which keeps colours in saturated cores.

Automatic levels: ``minimum`` 0 after background subtraction minus ``black_sigma`` times
the noise (so the sky is dark grey, not black), ``stretch`` (the linear range of the asinh)
``stretch_sigma`` times the combined noise, and ``Q`` (the asinh softening). PNG/TIFF are
written with the first row at the bottom (north up when the WCS is north up), as DS9
shows FITS images; :func:`rgb_fits_hdus` gives the three stretched planes as a cube with
the reference WCS.

Pixel convention: arrays ``(ny, nx)``; in the 8-bit image, FITS pixel ``(x, y)`` (0-based)
is at column ``x`` and row ``ny - 1 - y``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from pydantic import BaseModel, ConfigDict, Field

from darkroom.errors import BadInputError, SolveError
from darkroom.imaging.arith import FluxRatioConfig, _on_grid_of, stellar_flux_ratio
from darkroom.imaging.planes import ImagePlanes
from darkroom.imaging.resample import ResampleConfig

__all__ = ["RgbConfig", "RgbImage", "make_rgb", "rgb_fits_hdus", "thumbnail", "write_rgb"]


class RgbConfig(BaseModel):
    """Levels of a colour composite (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    q: float = Field(8.0, gt=0, le=100, description="asinh softening Q of Lupton et al.")
    stretch_sigma: float = Field(30.0, gt=0, description="linear range of the stretch [noise sigma]")
    black_sigma: float = Field(1.0, ge=0, description="sky shown this many sigma above black")
    balance: str = Field("stars", pattern="^(stars|none)$", description="stars: a median star is grey")
    resample: ResampleConfig = Field(
        default_factory=lambda: ResampleConfig(method="bilinear", conserve_flux=False),
        description="how the other two images go onto the reference grid (surface brightness)",
    )


@dataclass(frozen=True)
class RgbImage:
    """An 8-bit ``(ny, nx, 3)`` composite, the float planes behind it and the reference WCS."""

    rgb: np.ndarray  #: uint8 (ny, nx, 3), row 0 = y 0 (flip for display files)
    planes: tuple[np.ndarray, np.ndarray, np.ndarray]  #: scaled, background-free R, G, B
    factors: tuple[float, float, float]  #: balance factors applied
    minimum: float
    stretch: float
    q: float
    header: fits.Header  #: WCS of the grid


def _background_free(planes: ImagePlanes) -> tuple[np.ndarray, float]:
    data = np.where(np.isfinite(planes.sci), planes.sci, np.nan).astype(np.float32)
    _, med, std = sigma_clipped_stats(data[:: max(1, data.shape[0] // 512), :], sigma=3.0, maxiters=5)
    return np.nan_to_num(data - np.float32(med)), float(std)


def make_rgb(
    red: ImagePlanes,
    green: ImagePlanes,
    blue: ImagePlanes,
    *,
    reference: str = "red",
    config: RgbConfig | None = None,
) -> RgbImage:
    """Composite of three images on the grid of ``reference`` (``red``, ``green`` or ``blue``)."""
    cfg = config or RgbConfig()
    trio = {"red": red, "green": green, "blue": blue}
    if reference not in trio:
        raise BadInputError(f"reference {reference!r}: use red, green or blue")
    ref = trio[reference]
    on_grid = [p if name == reference else _on_grid_of(ref, p, cfg.resample) for name, p in trio.items()]
    subtracted = [_background_free(p) for p in on_grid]
    factors = [1.0, 1.0, 1.0]
    if cfg.balance == "stars":
        ratio_cfg = FluxRatioConfig(snr_min=20.0, isolation_fwhm=3.0)
        for k, p in enumerate(on_grid):
            if k == 1:
                continue
            try:
                factors[k] = 1.0 / stellar_flux_ratio(p, on_grid[1], config=ratio_cfg).ratio
            except (SolveError, BadInputError):
                factors[k] = subtracted[1][1] / subtracted[k][1] if subtracted[k][1] > 0 else 1.0
    scaled = [s * np.float32(f) for (s, _), f in zip(subtracted, factors, strict=True)]
    noise = float(np.sqrt(np.mean([(sd * f) ** 2 for (_, sd), f in zip(subtracted, factors, strict=True)])))
    minimum = -cfg.black_sigma * noise
    stretch = cfg.stretch_sigma * noise
    from astropy.visualization import make_lupton_rgb  # loads matplotlib: only when drawing

    rgb = make_lupton_rgb(scaled[0], scaled[1], scaled[2], minimum=minimum, stretch=stretch, Q=cfg.q)
    header = ref.wcs.to_header(relax=True) if ref.wcs is not None else fits.Header()
    return RgbImage(rgb, tuple(scaled), tuple(factors), minimum, stretch, cfg.q, header)  # type: ignore[arg-type]


def write_rgb(image: RgbImage, path: Path | str) -> Path:
    """Write the composite as PNG or TIFF (by suffix), first row at the bottom."""
    from PIL import Image as PILImage

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".tif", ".tiff", ".jpg", ".jpeg"):
        raise BadInputError(f"{path.name}: write .png, .tif or .jpg")
    PILImage.fromarray(np.ascontiguousarray(image.rgb[::-1])).save(path)
    return path


def rgb_fits_hdus(image: RgbImage) -> fits.HDUList:
    """The stretched planes as a float cube ``(3, ny, nx)`` (R, G, B) with the grid's WCS."""
    cube = image.rgb.transpose(2, 0, 1).astype(np.float32) / 255.0
    header = image.header.copy()
    header["CTYPE3"] = ("RGB", "colour plane: 1 red, 2 green, 3 blue")
    header["RGBQ"] = (image.q, "asinh softening Q (Lupton et al. 2004)")
    header["RGBSTR"] = (image.stretch, "asinh stretch [input unit]")
    header["RGBMIN"] = (image.minimum, "black level [input unit, background removed]")
    for k, c in enumerate("RGB"):
        header[f"RGBFAC{c}"] = (image.factors[k], f"balance factor of plane {c}")
    return fits.HDUList([fits.PrimaryHDU(cube, header=header)])


def thumbnail(sci: np.ndarray, path: Path | str, *, max_size: int = 512, q: float = 8.0) -> Path:
    """A grey asinh-stretched PNG of one image, binned down to at most ``max_size`` pixels."""
    from PIL import Image as PILImage

    data = np.nan_to_num(np.asarray(sci, np.float32))
    factor = max(1, int(np.ceil(max(data.shape) / max_size)))
    ny, nx = (data.shape[0] // factor) * factor, (data.shape[1] // factor) * factor
    binned = data[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor).mean(axis=(1, 3))
    _, med, std = sigma_clipped_stats(binned, sigma=3.0, maxiters=5)
    from astropy.visualization import make_lupton_rgb

    grey = make_lupton_rgb(binned - med, binned - med, binned - med, minimum=-std, stretch=30 * std, Q=q)
    PILImage.fromarray(np.ascontiguousarray(grey[::-1, :, 0])).save(path)
    return Path(path)
