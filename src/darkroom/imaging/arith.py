"""Image arithmetic with MASK/VAR propagation, stellar flux ratios, continuum subtraction.

:func:`image_arith` computes ``a OP b`` for ``OP`` in ``+ - * /`` with ``b`` a scalar
(optionally with an error) or an image, which is resampled onto ``a``'s grid first when its
WCS or shape differ. Errors propagate to first order for independent operands::

    a + b, a - b : VAR = VAR_a + VAR_b
    a * b        : VAR = b^2 VAR_a + a^2 VAR_b
    a / b        : VAR = (VAR_a + (a / b)^2 VAR_b) / b^2

MASK is the OR of both masks; a division by zero gives ``NO_DATA`` (SCI NaN).

:func:`stellar_flux_ratio` measures ``F_num / F_den`` from the aperture fluxes of stars
found on ``den`` and measured on both images (same grid, backgrounds removed with
:func:`darkroom.detect.estimate_background`); the ratio is the inverse-variance weighted
mean of the per-star ratios after 3-sigma clipping, its error the larger of the formal
error and the scatter over sqrt(n).

:func:`continuum_subtract` is ``narrow - s * broad`` with ``s`` that ratio measured on the
stars (which have no line emission, so they vanish), and records ``s`` and its error; the
scale's own error is not added to VAR (it is correlated over the image) but returned.

Pixel positions 0-based (sep); fluxes in the SCI unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import sep
from scipy.spatial import cKDTree

from darkroom.detect import estimate_background
from darkroom.detect.background import as_sep_array
from darkroom.errors import BadInputError, SolveError
from darkroom.imaging.planes import ImagePlanes
from darkroom.imaging.resample import grid_of, resample
from darkroom.imaging.settings import FluxRatioConfig, ResampleConfig
from darkroom.maskbits import MaskBit

__all__ = [
    "ContinuumResult",
    "FluxRatio",
    "FluxRatioConfig",
    "StarApertures",
    "continuum_subtract",
    "image_arith",
    "reference_stars",
    "same_grid",
    "stellar_flux_ratio",
]

Op = Literal["+", "-", "*", "/"]


def same_grid(a: ImagePlanes, b: ImagePlanes, *, tol_pix: float = 1e-3) -> bool:
    """True when ``b`` has ``a``'s shape and its WCS maps ``a``'s corners within ``tol_pix``."""
    if a.shape != b.shape:
        return False
    if a.wcs is None or b.wcs is None:
        return a.wcs is None and b.wcs is None
    ny, nx = a.shape
    x = np.array([0.0, nx - 1.0, 0.0, nx - 1.0, (nx - 1) / 2.0])
    y = np.array([0.0, 0.0, ny - 1.0, ny - 1.0, (ny - 1) / 2.0])
    ra, dec = a.wcs.all_pix2world(x, y, 0)
    bx, by = b.wcs.all_world2pix(ra, dec, 0)
    return bool(np.max(np.hypot(bx - x, by - y)) < tol_pix)


def _on_grid_of(a: ImagePlanes, b: ImagePlanes, config: ResampleConfig | None) -> ImagePlanes:
    if same_grid(a, b):
        return b
    if a.wcs is None or b.wcs is None:
        raise BadInputError(f"{b.name or 'second image'}: different grid and no WCS to resample with")
    return resample(b, grid_of(a), config).planes(b)


def image_arith(
    a: ImagePlanes,
    op: Op,
    b: ImagePlanes | float,
    *,
    b_err: float = 0.0,
    resample_config: ResampleConfig | None = None,
) -> ImagePlanes:
    """``a OP b`` with VAR and MASK propagated (see the module docstring).

    ``b`` is a scalar (``b_err`` its 1-sigma error, same unit) or an image, resampled onto
    ``a``'s grid when it differs. Returns planes on ``a``'s grid with ``a``'s header.
    """
    if op not in ("+", "-", "*", "/"):
        raise BadInputError(f"operator {op!r}: use one of + - * /")
    sa = a.sci.astype(np.float64)
    va = a.var.astype(np.float64)
    mask = a.mask.astype(np.int32).copy()
    if isinstance(b, ImagePlanes):
        bb = _on_grid_of(a, b, resample_config)
        sb, vb = bb.sci.astype(np.float64), bb.var.astype(np.float64)
        mask |= bb.mask.astype(np.int32)
    else:
        sb, vb = float(b), float(b_err) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        if op == "+":
            sci, var = sa + sb, va + vb
        elif op == "-":
            sci, var = sa - sb, va + vb
        elif op == "*":
            sci, var = sa * sb, sb * sb * va + sa * sa * vb
        else:
            sci = sa / sb
            var = (va + sci * sci * vb) / (sb * sb)
    bad = ~np.isfinite(sci)
    mask = np.where(bad, mask | np.int32(MaskBit.NO_DATA), mask)
    sci = np.where(bad, np.nan, sci)
    var = np.where(np.isfinite(var), var, np.nan)
    return a.with_planes(sci.astype(np.float32), var.astype(np.float32), mask.astype(np.int32))


# --------------------------------------------------------------------------- flux ratios


@dataclass(frozen=True)
class FluxRatio:
    """``F_num / F_den`` measured on stars."""

    ratio: float
    err: float
    n_stars: int
    radius_pix: float
    x: np.ndarray  #: positions of the stars used (0-based)
    y: np.ndarray


@dataclass(frozen=True)
class StarApertures:
    """Stars of one image measured once: positions, aperture, sums and flags.

    A reference image's stars measured on many images (a coadd's flux scales) are summed on
    the reference only once.
    """

    x: np.ndarray  #: 0-based positions
    y: np.ndarray
    radius_pix: float
    flux: np.ndarray  #: aperture sums of the background-subtracted SCI [SCI unit]
    var: np.ndarray  #: aperture sums of VAR [SCI unit^2]
    flagged: np.ndarray  #: an aperture holds a pixel with ``exclude_bits``
    shape: tuple[int, int]


def _subtracted(planes: ImagePlanes, sky_subtracted: bool = False) -> np.ndarray:
    arr = as_sep_array(planes.sci)
    sub = arr if sky_subtracted else arr - estimate_background(arr, mask=planes.mask).level_adu
    return np.where(np.isfinite(sub), sub, 0.0).astype(np.float32)


def _aperture_flags(mask: np.ndarray, x: np.ndarray, y: np.ndarray, r: float, bits: int) -> np.ndarray:
    bad = ((mask & bits) != 0).astype(np.float32)
    frac, _, _ = sep.sum_circle(bad, x, y, r)
    return np.asarray(frac) > 0


def _measure(
    planes: ImagePlanes, sub: np.ndarray, x: np.ndarray, y: np.ndarray, r: float, bits: int
) -> StarApertures:
    f, _, _ = sep.sum_circle(sub, x, y, r)
    v, _, _ = sep.sum_circle(np.nan_to_num(planes.var.astype(np.float32)), x, y, r)
    flagged = _aperture_flags(planes.mask, x, y, r, bits)
    return StarApertures(x, y, float(r), np.asarray(f), np.asarray(v), flagged, planes.shape)


def reference_stars(
    den: ImagePlanes,
    *,
    config: FluxRatioConfig | None = None,
    positions: tuple[np.ndarray, np.ndarray] | None = None,
    radius_pix: float | None = None,
    sky_subtracted: bool = False,
) -> StarApertures:
    """The stars of ``den`` a flux ratio is measured on, summed on ``den``.

    Bright isolated round stars detected on ``den`` (``config``), or the given ``positions``
    (0-based) with ``radius_pix``; ``sky_subtracted``: ``den``'s background is already
    removed (no mesh background is subtracted again). Raises :class:`SolveError` with fewer
    than 3 stars away from the edges.
    """
    cfg = config or FluxRatioConfig()
    sub_d = _subtracted(den, sky_subtracted)
    if positions is None:
        err = float(np.sqrt(np.nanmedian(den.var)))
        bad = (den.mask & cfg.exclude_bits) != 0
        objs = sep.extract(sub_d, cfg.threshold_sigma, err=err, mask=bad, minarea=5)
        if len(objs) < 3:
            raise SolveError(f"only {len(objs)} stars detected for the flux ratio")
        fwhm = 2.0 * np.sqrt(np.log(2.0) * (objs["a"] ** 2 + objs["b"] ** 2))
        fwhm_med = (
            float(np.median(fwhm[objs["flag"] == 0])) if np.any(objs["flag"] == 0) else float(np.median(fwhm))
        )
        x, y = np.asarray(objs["x"], float), np.asarray(objs["y"], float)
        keep = (objs["a"] / np.maximum(objs["b"], 1e-3) < cfg.max_elongation) & (objs["flag"] == 0)
        if cfg.isolation_fwhm > 0 and len(x) > 1:
            # nearest other detection by a k-d tree: an n x n distance matrix of thousands of
            # detections was the coadd's peak memory (450 MB at 2048^2)
            xy = np.column_stack([x, y])
            nearest, _ = cKDTree(xy).query(xy, k=2)
            keep &= nearest[:, 1] > cfg.isolation_fwhm * fwhm_med
        order = np.argsort(-np.asarray(objs["flux"]))
        order = order[keep[order]][: cfg.max_stars]
        x, y = x[order], y[order]
        radius = radius_pix or cfg.radius_fwhm * fwhm_med
    else:
        x, y = (np.asarray(v, float) for v in positions)
        radius = radius_pix or 5.0
    ny, nx = den.shape
    inside = (x > radius) & (x < nx - 1 - radius) & (y > radius) & (y < ny - 1 - radius)
    x, y = x[inside], y[inside]
    if len(x) < 3:
        raise SolveError(f"only {len(x)} stars away from the edges for the flux ratio")
    return _measure(den, sub_d, x, y, radius, cfg.exclude_bits)


def stellar_flux_ratio(
    num: ImagePlanes,
    den: ImagePlanes | None = None,
    *,
    config: FluxRatioConfig | None = None,
    positions: tuple[np.ndarray, np.ndarray] | None = None,
    radius_pix: float | None = None,
    reference: StarApertures | None = None,
    sky_subtracted: bool = False,
) -> FluxRatio:
    """Flux ratio ``num / den`` of stars, both images on one grid (see module docstring).

    ``positions`` (0-based x, y) and ``radius_pix`` skip the detection on ``den`` (e.g. a
    reference frame's stars measured on many frames); ``reference`` (from
    :func:`reference_stars`) replaces ``den`` altogether. ``sky_subtracted``: the images'
    backgrounds are already removed. Raises :class:`SolveError` with fewer than 3 usable stars.
    """
    cfg = config or FluxRatioConfig()
    if reference is None:
        if den is None:
            raise BadInputError("flux ratio needs a reference image or its measured stars")
        if num.shape != den.shape:
            raise BadInputError(f"flux ratio needs one grid (shapes {num.shape} and {den.shape})")
        reference = reference_stars(
            den, config=cfg, positions=positions, radius_pix=radius_pix, sky_subtracted=sky_subtracted
        )
    elif num.shape != reference.shape:
        raise BadInputError(f"flux ratio needs one grid (shapes {num.shape} and {reference.shape})")
    x, y, radius = reference.x, reference.y, reference.radius_pix
    mine = _measure(num, _subtracted(num, sky_subtracted), x, y, radius, cfg.exclude_bits)
    fd, vd, fn, vn = reference.flux, reference.var, mine.flux, mine.var
    flagged = reference.flagged | mine.flagged
    with np.errstate(divide="ignore", invalid="ignore"):
        snr_d = fd / np.sqrt(vd)
        snr_n = fn / np.sqrt(vn)
        r = fn / fd
        r_err = np.abs(r) * np.sqrt(vn / fn**2 + vd / fd**2)
    good = ~flagged & (snr_d > cfg.snr_min) & (snr_n > cfg.snr_min) & np.isfinite(r) & (r_err > 0)
    if good.sum() < 3:
        raise SolveError(f"only {int(good.sum())} stars with S/N > {cfg.snr_min:g} on both images")
    use = good.copy()
    for _ in range(5):
        w = 1.0 / r_err[use] ** 2
        mean = float(np.sum(w * r[use]) / np.sum(w))
        scatter = float(1.4826 * np.median(np.abs(r[use] - np.median(r[use]))))
        resid = np.abs(r - mean) / np.sqrt(r_err**2 + scatter**2)
        new = good & (resid < cfg.clip_sigma)
        if new.sum() < 3 or np.array_equal(new, use):
            break
        use = new
    w = 1.0 / r_err[use] ** 2
    mean = float(np.sum(w * r[use]) / np.sum(w))
    n = int(use.sum())
    formal = float(1.0 / math.sqrt(np.sum(w)))
    spread = float(np.std(r[use], ddof=1) / math.sqrt(n)) if n > 1 else formal
    return FluxRatio(mean, max(formal, spread), n, float(radius), x[use], y[use])


@dataclass(frozen=True)
class ContinuumResult:
    """A continuum-subtracted image and the scale used."""

    image: ImagePlanes
    scale: float  #: s in narrow - s broad
    scale_err: float
    n_stars: int


def continuum_subtract(
    narrow: ImagePlanes,
    broad: ImagePlanes,
    *,
    scale: float | None = None,
    scale_err: float = 0.0,
    config: FluxRatioConfig | None = None,
    resample_config: ResampleConfig | None = None,
) -> ContinuumResult:
    """``narrow - s * broad`` (broad resampled onto narrow's grid when needed).

    ``s`` is measured from the stars (:func:`stellar_flux_ratio`) unless given. The result's
    header carries ``CONTSCAL``, ``CONTSERR`` and ``CONTNSTR``.
    """
    broad_on = _on_grid_of(narrow, broad, resample_config)
    n_stars = 0
    if scale is None:
        ratio = stellar_flux_ratio(narrow, broad_on, config=config)
        scale, scale_err, n_stars = ratio.ratio, ratio.err, ratio.n_stars
    scaled = image_arith(broad_on, "*", float(scale))
    out = image_arith(narrow, "-", scaled)
    header = out.header.copy()
    header["CONTSCAL"] = (float(scale), "continuum scale s: narrow - s * broad")
    header["CONTSERR"] = (float(scale_err), "1-sigma error of CONTSCAL")
    header["CONTNSTR"] = (int(n_stars), "stars that measured CONTSCAL (0: given)")
    header.add_history(f"continuum subtracted: {narrow.name} - {scale:.6g} * {broad.name}")
    return ContinuumResult(
        out.with_planes(out.sci, out.var, out.mask, header=header), float(scale), float(scale_err), n_stars
    )
