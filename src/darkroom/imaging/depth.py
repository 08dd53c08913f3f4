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

A noise component fixed on the detector (the master dark's and bias's own noise, the same in
every calibrated frame) does not average down in a coadd: only the pointing drift between
the inputs spreads it. :func:`detector_noise_in_coadd` measures what is left of it: one
realisation of it is drawn on the detector, resampled through every input's WCS, combined
with the inputs' scales and weights, and its empty-aperture noise measured.

Pixel positions 0-based; fluxes in the SCI unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sep
from scipy.ndimage import binary_dilation

from darkroom.detect import estimate_background
from darkroom.detect.background import BackgroundConfig, as_sep_array
from darkroom.errors import BadInputError
from darkroom.imaging.planes import ImagePlanes
from darkroom.imaging.resample import DEFAULT_EXCLUDE_BITS, ResampleConfig, TargetGrid, resample
from darkroom.maskbits import MaskBit

__all__ = ["Depth", "detector_noise_in_coadd", "empty_aperture_depth"]


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


def detector_noise_in_coadd(
    variance: np.ndarray,
    wcs_list: Sequence,
    weights: Sequence[float],
    scales: Sequence[float],
    target: TargetGrid,
    *,
    radius_pix: float,
    resample_config: ResampleConfig | None = None,
    seed: int = 0,
    annulus: tuple[float, float] | None = (2.0, 3.0),
) -> Depth:
    """Empty-aperture noise, in a coadd, of a noise field fixed on the detector (module docstring).

    ``variance`` [input unit^2, detector pixels; NaN or negative: no data] is the field's
    per-pixel variance (white); ``wcs_list``, ``weights`` and ``scales`` are the inputs'
    WCSs, coadd weights ``w_i`` and flux scales ``s_i``, so the field in the coadd is
    ``sum(w_i s_i G(x_i)) / sum(w_i)`` on ``target`` in the reference input's unit (divide
    a coadd's SCI by EXPTIME / EXPREF to compare). One realisation, drawn with ``seed``.
    """
    if not (len(wcs_list) == len(weights) == len(scales)) or not len(wcs_list):
        raise BadInputError("one WCS, weight and scale per input, at least one input")
    v = np.asarray(variance, np.float32)
    ok = np.isfinite(v) & (v >= 0)
    rng = np.random.default_rng(seed)
    field = rng.standard_normal(v.shape, dtype=np.float32) * np.sqrt(np.where(ok, v, 0.0), dtype=np.float32)
    field_mask = np.where(ok, 0, int(MaskBit.NO_DATA)).astype(np.int32)
    acc = np.zeros(target.shape, np.float64)
    wsum = np.zeros(target.shape, np.float64)
    ones = np.ones_like(v)
    for wcs, w, s in zip(wcs_list, weights, scales, strict=True):
        if not w > 0:
            continue
        res = resample(ImagePlanes(field, ones, field_mask, wcs), target, resample_config)
        good = ((res.mask & DEFAULT_EXCLUDE_BITS) == 0) & np.isfinite(res.sci)
        acc[good] += w * s * res.sci[good]
        wsum[good] += w
    covered = wsum > 0
    coadded = np.where(covered, acc / np.where(covered, wsum, 1.0), 0.0).astype(np.float32)
    # pure noise: no source to mask (a detection threshold no noise peak reaches)
    return empty_aperture_depth(
        coadded,
        np.where(covered, 0, int(MaskBit.NO_DATA)).astype(np.int32),
        radius_pix=radius_pix,
        detect_sigma=1e6,
        seed=seed,
        annulus=annulus,
    )
