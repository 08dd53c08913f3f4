"""Depth of an image: the noise of empty apertures and the limiting flux/magnitude.

Resampled images and coadds have noise correlated between neighbouring pixels, so the
per-pixel rms underestimates the noise in an aperture. The empty-aperture method measures
it directly: apertures of radius ``r`` placed at random where there is no source (a
segmentation map from sep, dilated) and no masked pixel, on the background-subtracted image;
the aperture noise is the robust rms (1.4826 MAD) of their sums, each less the mean of an
annulus of 2 to 3 radii around it (masked pixels left out), as aperture photometry measures
a local sky: structure of the sky larger than the annulus (fringes, gradients, the mesh
background's residuals) does not count, the annulus's own noise does. The ``n_sigma`` limiting
flux is ``n_sigma`` times that (the source's own Poisson noise is neglected: faint sources),
divided by the fraction of a point source's flux inside the aperture when given, so the
limit is a total flux.

Pixel positions 0-based; fluxes in the SCI unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sep
from scipy.ndimage import binary_dilation

from darkroom.detect import estimate_background
from darkroom.detect.background import BackgroundConfig, as_sep_array
from darkroom.errors import BadInputError
from darkroom.imaging.resample import DEFAULT_EXCLUDE_BITS

__all__ = ["Depth", "empty_aperture_depth"]


@dataclass(frozen=True)
class Depth:
    """Aperture noise and limits of one image."""

    radius_pix: float
    sigma_aperture: float  #: rms of empty-aperture sums [SCI unit]
    sigma_pixel: float  #: robust per-pixel rms of the background [SCI unit]
    n_apertures: int
    limit_flux: float  #: n_sigma * sigma_aperture / aperture_fraction [SCI unit]
    n_sigma: float

    def limit_mag(self, zp: float, exptime_s: float | None = None) -> float:
        """``zp - 2.5 log10(limit_flux / exptime_s)`` [mag] (zp for 1 unit per second, or per image)."""
        rate = self.limit_flux / exptime_s if exptime_s else self.limit_flux
        return float(zp - 2.5 * math.log10(rate))


def empty_aperture_depth(
    sci: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    radius_pix: float,
    n_sigma: float = 5.0,
    aperture_fraction: float = 1.0,
    n_apertures: int = 3000,
    exclude_bits: int = DEFAULT_EXCLUDE_BITS,
    detect_sigma: float = 1.5,
    dilate_pix: int = 4,
    seed: int = 0,
    background_box_pix: int = 32,
    annulus: tuple[float, float] | None = (2.0, 3.0),
) -> Depth:
    """Empty-aperture noise and the ``n_sigma`` limiting flux of an image (module docstring)."""
    arr = as_sep_array(sci)
    bad = ~np.isfinite(arr)
    if mask is not None:
        bad |= (np.asarray(mask).astype(np.int64) & exclude_bits) != 0
    bkg = estimate_background(arr, mask=bad, config=BackgroundConfig(box_size_pix=background_box_pix))
    sub = np.where(bad, 0.0, arr - bkg.level_adu).astype(np.float32)
    _objs, seg = sep.extract(
        sub, detect_sigma, err=bkg.global_rms_adu, mask=bad, segmentation_map=True, minarea=5
    )
    occupied = binary_dilation((seg > 0) | bad, iterations=dilate_pix) if dilate_pix else (seg > 0) | bad
    ny, nx = arr.shape
    r = float(radius_pix)
    rng = np.random.default_rng(seed)
    want = n_apertures
    xs, ys = [], []
    occ = occupied.astype(np.float32)
    for _ in range(20):
        x = rng.uniform(r + 1, nx - r - 2, 4 * want)
        y = rng.uniform(r + 1, ny - r - 2, 4 * want)
        hit, _, _ = sep.sum_circle(occ, x, y, r)
        free = np.asarray(hit) == 0
        xs.append(x[free])
        ys.append(y[free])
        if sum(len(v) for v in xs) >= want:
            break
    x = np.concatenate(xs)[:want]
    y = np.concatenate(ys)[:want]
    if len(x) < 50:
        raise BadInputError(f"only {len(x)} empty apertures of radius {r:.1f} px fit on the image")
    if annulus is not None:  # a local sky per aperture, as aperture photometry measures it
        sums, _, _ = sep.sum_circle(sub, x, y, r, bkgann=(annulus[0] * r, annulus[1] * r), mask=occupied)
    else:
        sums, _, _ = sep.sum_circle(sub, x, y, r)
    sums = np.asarray(sums)
    sig_ap = float(1.4826 * np.median(np.abs(sums - np.median(sums))))
    free_pix = sub[~occupied]
    sig_pix = (
        float(1.4826 * np.median(np.abs(free_pix - np.median(free_pix)))) if free_pix.size else float("nan")
    )
    if not aperture_fraction > 0:
        raise BadInputError(f"aperture_fraction must be positive (got {aperture_fraction})")
    return Depth(r, sig_ap, sig_pix, len(x), n_sigma * sig_ap / aperture_fraction, n_sigma)
