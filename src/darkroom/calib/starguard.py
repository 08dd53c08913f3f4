"""Keep cosmic-ray flags off undersampled stars.

L.A.Cosmic tells a cosmic ray from a star by its sharpness against the fine-structure
image; with a FWHM of 2 pixels or less, star cores are as sharp as cosmic rays and get
flagged and interpolated (a star's flux off by several times). Here:

1. :func:`find_stars` detects sources 3 sigma above the sky (sep) and measures the frame
   FWHM from the typical peak-to-flux ratio of the bright unsaturated ones (robust in
   crowded fields, unlike second moments); :func:`tuned_objlim` raises L.A.Cosmic's
   ``objlim`` for an undersampled frame before detection;
2. :func:`protect_stars` then tests every source, and every pixel on or next to a flag
   that is as bright as the unflagged pixels around it, as a star: a pixel-integrated
   Gaussian of the frame FWHM plus a plane is fitted to the pixels of its disk that are
   not flagged (or flagged below ``nsigma``: the cosmic-ray step's growth); when the fit
   is star-shaped, a flag it covers is cleared unless the pixel exceeds
   ``(1 + psf_tolerance)`` x the model plus ``nsigma`` sigma. A cosmic ray on a star, or a
   cosmic ray taken for a star, cannot explain itself because its own pixels are left out;
3. flags around saturated stars (compact saturated patches) are cleared, where no model
   of the clipped star holds.

Pixels are 0-based (sep's convention: the centre of the first pixel is (0, 0)); values
in adu, variances in adu^2.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from darkroom.robust import median
from darkroom.sepboxes import extract_around, nonzero_2d, pixstack, seed_cells

from .settings import StarGuardConfig

__all__ = [
    "StarExtraction",
    "StarGuardConfig",
    "StarGuardResult",
    "find_stars",
    "protect_stars",
    "tuned_objlim",
]

_GAUSS_SIGMA_PER_FWHM = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass(frozen=True)
class StarGuardResult:
    """The cleaned cosmic-ray mask, the stars used and what was cleared."""

    mask: np.ndarray
    fwhm_pix: float
    n_stars: int
    n_cleared: int


def tuned_objlim(objlim: float, fwhm_pix: float, *, well_sampled_fwhm: float = 2.5) -> float:
    """L.A.Cosmic's ``objlim`` for a frame of FWHM ``fwhm_pix``: unchanged at or above
    ``well_sampled_fwhm``, raised as (well_sampled_fwhm / FWHM)^2 below it, because an
    undersampled star core has as much fine-structure contrast as a cosmic ray (van Dokkum
    2001, sect. 3.3). Cosmic rays are sharper still, so recall hardly changes."""
    return float(objlim * max(1.0, (well_sampled_fwhm / max(fwhm_pix, 0.5)) ** 2))


def _pixel_fraction(dx: np.ndarray, dy: np.ndarray, sigma: float) -> np.ndarray:
    """Fraction of a unit Gaussian (sigma [pixel]) falling in the pixel at offset (dx, dy) from its centre."""
    from scipy.special import erf  # loaded when stars are guarded, not at start-up

    s = sigma * math.sqrt(2.0)

    def one(d: np.ndarray) -> np.ndarray:
        return 0.5 * (erf((d + 0.5) / s) - erf((d - 0.5) / s))

    return one(dx) * one(dy)


_RATIO_RADIUS = 3.0  # aperture radius of the peak-to-flux ratio [pixel]
_RATIO_PERCENTILE = 25.0
_MIN_STAR_B = 0.42  # sep minor axis [pixel] below which a source is a cosmic-ray track


@functools.lru_cache(maxsize=1)
def _peak_ratio_table() -> tuple[np.ndarray, np.ndarray]:
    """(lower-quartile peak-pixel / aperture-flux ratio over random centring, FWHM) of a Gaussian."""
    fwhms = np.linspace(0.6, 12.0, 80)
    offsets = np.linspace(-0.5, 0.5, 7)
    oy, ox = (o.ravel()[:, None, None] for o in np.meshgrid(offsets, offsets, indexing="ij"))
    py, px = np.mgrid[-6:7, -6:7]
    dx, dy = px[None] - ox, py[None] - oy  # (49 centrings, 13, 13)
    inside = dx**2 + dy**2 <= _RATIO_RADIUS**2
    ratios = []
    for f in fwhms:
        frac = _pixel_fraction(dx, dy, f * _GAUSS_SIGMA_PER_FWHM)
        vals = frac.max(axis=(1, 2)) / np.where(inside, frac, 0.0).sum(axis=(1, 2))
        ratios.append(np.percentile(vals, _RATIO_PERCENTILE))
    return np.asarray(ratios), fwhms


def _fwhm_from_peak_ratio(ratio: float) -> float:
    """FWHM [pixel] of the Gaussian whose typical peak-to-flux ratio is ``ratio``."""
    ratios, fwhms = _peak_ratio_table()
    return float(np.interp(ratio, ratios[::-1], fwhms[::-1]))


def _centred_peak_fraction(fwhm_pix: float) -> float:
    sigma = fwhm_pix * _GAUSS_SIGMA_PER_FWHM
    return float(_pixel_fraction(np.zeros(1), np.zeros(1), sigma)[0])


_CELL = 8  # seeds are grouped on a grid of cells this size [pixel]
_BOX_MARGIN = 8  # pixels around a seed region; doubled while a source touches a box edge
_MAX_BOX_SHARE = 0.35  # boxes covering more of the frame: one extraction of the whole frame
_MAX_BOXES = 400  # more separate regions than this (a crowded field): the whole frame
# One box's extraction costs as much as this many pixels of a whole-frame extraction: sep's
# set-up and the bookkeeping here, ~0.25 ms a box against ~40 ns a pixel (measured on the
# hostile preset's 650 x 500 frames: 47 boxes of 40k pixels in all took 15.5 ms, the whole
# frame 15.5 ms; on ARCSAT's 1k x 1k frames 3-11 boxes take 2.7-6.7 ms, the frame 50-65 ms).
_BOX_COST_PIX = 6000


def _sep_call(work: np.ndarray, err: np.ndarray, mask: np.ndarray | None, cfg: StarGuardConfig):
    """sep sources ``cfg.detect_sigma`` sigma above zero (``work`` sky-subtracted, ``err`` the
    per-pixel sigma), matched-filtered, minimum area 3, deblended to 0.005; sep's pixel stack
    as the caller set it."""
    import sep

    return sep.extract(work, cfg.detect_sigma, err=err, mask=mask, minarea=3, deblend_cont=0.005)


def _sep_extract(work: np.ndarray, err: np.ndarray, mask: np.ndarray | None, cfg: StarGuardConfig):
    """:func:`_sep_call` with room for every pixel of the image and no more (sep allocates its
    pixel stack per call)."""
    with pixstack(work.size + 64):
        return _sep_call(work, err, mask, cfg)


def _extract_around(
    seeds: np.ndarray,
    work: np.ndarray,
    err: np.ndarray | _NoiseAt,
    mask: np.ndarray | None,
    cfg: StarGuardConfig,
    *,
    whole: Callable[[], np.ndarray] | None = None,
) -> np.ndarray | None:
    """The sources of :func:`_sep_extract` whose footprints reach the ``seeds`` pixels' regions,
    found in boxes around those regions instead of the whole frame
    (:func:`darkroom.sepboxes.extract_around`: every source returned has its whole footprint,
    matched filter included, inside its box, so its pixels, centroid, peak and shape are as on
    the whole frame). When the boxes would cover much of the frame or cost more than it, the
    whole frame is extracted once instead (``whole``, when given, does it: a caller that keeps
    the result). Coordinates are the frame's; None without seeds.
    """

    def box(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, None]:
        sl = (slice(y0, y1), slice(x0, x1))
        sub_mask = None if mask is None else np.ascontiguousarray(mask[sl])
        return _sep_call(np.ascontiguousarray(work[sl]), np.ascontiguousarray(err[sl]), sub_mask, cfg), None

    def whole_frame() -> tuple[np.ndarray, None]:
        return (whole() if whole is not None else _sep_extract(work, err, mask, cfg)), None

    found = extract_around(
        seed_cells(seeds, _CELL),
        _CELL,
        work.shape,
        box,
        whole_frame,
        margin=_BOX_MARGIN,
        max_share=_MAX_BOX_SHARE,
        max_boxes=_MAX_BOXES,
        box_cost_pix=_BOX_COST_PIX,
    )
    return None if found is None else found[0]


def noise_from_variance(variance: np.ndarray) -> np.ndarray:
    """The per-pixel sigma of a variance plane: ``sqrt(max(var, 1e-12))``, float32 (contiguous)."""
    noise = np.maximum(np.asarray(variance, dtype=np.float32), np.float32(1e-12))
    return np.sqrt(noise, out=noise)


class _NoiseAt:
    """:func:`noise_from_variance` of a variance plane, computed only at the pixels looked up
    (``noise[rows, cols]``, ``noise[box]``): the same values as the whole plane's."""

    def __init__(self, variance: np.ndarray) -> None:
        self.variance = variance
        self.shape = variance.shape

    def __getitem__(self, key) -> np.ndarray:
        return noise_from_variance(self.variance[key])


class StarExtraction:
    """The sep sources of one sky-subtracted frame, asked for around given pixels.

    ``work`` [adu] is the frame minus its sky, ``err`` the per-pixel sigma [adu] (or None with
    ``variance`` [adu^2]: then the sigma is :func:`noise_from_variance`, computed only in the
    boxes extracted, unless the whole frame is), ``mask`` the pixels sep should not use (or
    None). Each ask is answered from boxes around its pixels (:func:`_extract_around`) or,
    where those would cost more, from one extraction of the whole frame, which is then kept:
    :func:`find_stars` and :func:`protect_stars` of the same frame share it instead of
    extracting twice.
    """

    def __init__(
        self,
        work: np.ndarray,
        err: np.ndarray | None,
        mask: np.ndarray | None,
        config: StarGuardConfig,
        *,
        variance: np.ndarray | None = None,
    ) -> None:
        self.work = np.ascontiguousarray(work, dtype=np.float32)
        if err is None and variance is None:
            raise ValueError("StarExtraction needs the sigma (err) or the variance of the pixels")
        self._err = None if err is None else np.ascontiguousarray(err, dtype=np.float32)
        self._variance = None if err is not None else np.asarray(variance, dtype=np.float32)
        self.mask = None if mask is None else np.ascontiguousarray(mask, dtype=bool)
        self.config = config
        self._whole: np.ndarray | None = None

    @property
    def err(self) -> np.ndarray:
        """The per-pixel sigma of the whole frame (from the variance: made on first use)."""
        if self._err is None:
            self._err = noise_from_variance(self._variance)
        return self._err

    @property
    def noise(self) -> np.ndarray | _NoiseAt:
        """The per-pixel sigma, to be indexed: the whole plane when made, else computed where
        looked up."""
        return self._err if self._err is not None else _NoiseAt(self._variance)

    def noise_median(self) -> np.floating:
        """``median(err)``, exactly; from the variance's middle values when the sigma plane is
        not made (the sigma is a non-decreasing function of the variance)."""
        if self._err is not None:
            return median(self._err)
        return median(self._variance, middle=lambda mid: np.median(noise_from_variance(mid)))

    def whole(self) -> np.ndarray:
        """Every source of the frame (extracted once)."""
        if self._whole is None:
            self._whole = _sep_extract(self.work, self.err, self.mask, self.config)
        return self._whole

    def around(self, seeds: np.ndarray) -> np.ndarray | None:
        """The sources whose footprints reach the ``seeds`` pixels' regions (more may come with
        them); None without seeds."""
        if not seeds.any():
            return None
        if self._whole is not None:
            return self._whole
        return _extract_around(seeds, self.work, self.noise, self.mask, self.config, whole=self.whole)


def find_stars(
    data: np.ndarray,
    sky: np.ndarray,
    noise: np.ndarray,
    *,
    ignore: np.ndarray | None = None,
    saturated: np.ndarray | None = None,
    config: StarGuardConfig | None = None,
    extraction: StarExtraction | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int]:
    """The bright sources' centroids ``x, y`` [pixel, 0-based] and aperture fluxes [adu], the
    frame FWHM [pixel] and how many of the bright sources look like stars (peak-to-flux ratio
    and width).

    Sources are sep's, ``detect_sigma`` above the sky; "bright" ones peak 20 times the
    typical noise above it, and only they (and their neighbours) are extracted, in boxes
    around them (:func:`_extract_around`): a frame of ~25 stars costs a few % of its area.
    ``data`` and ``sky`` in adu, ``noise`` the per-pixel sigma [adu]; ``ignore`` marks
    pixels sep should not use; ``saturated`` pixels keep their sources out of the FWHM.
    ``extraction``: the frame's :class:`StarExtraction` (of ``data - sky``, ``noise`` and
    ``ignore``) when the caller shares it with :func:`protect_stars`.
    """
    import sep

    cfg = config or StarGuardConfig()
    none = np.zeros(0), np.zeros(0), np.zeros(0), cfg.default_fwhm_pix, 0
    if extraction is None:
        extraction = StarExtraction(data - sky, noise, ignore, cfg)
    work, mask = extraction.work, extraction.mask
    floor = 20 * extraction.noise_median()
    seeds = work > floor
    if mask is not None:
        seeds &= ~mask
    try:
        objs = extraction.around(seeds)
    except Exception:  # sep refuses pathological frames (too many objects): no protection possible
        return none
    if objs is None:
        return none
    objs = objs[objs["peak"] > floor]
    if len(objs) == 0:
        return none
    x, y = objs["x"].astype(float), objs["y"].astype(float)
    ny, nx = work.shape
    ix = np.clip(np.rint(x).astype(int), 0, nx - 1)
    iy = np.clip(np.rint(y).astype(int), 0, ny - 1)
    unsaturated = np.ones(x.size, bool) if saturated is None else ~saturated[iy, ix]
    flux, _, _ = sep.sum_circle(work, x, y, _RATIO_RADIUS, mask=mask, subpix=5)  # flux: no err needed
    flux = np.asarray(flux, float)
    ratio = objs["peak"] / np.where(flux > 0, flux, np.inf)
    # unsaturated and wider than a cosmic-ray track (a single pixel has b = 0.29)
    bright = (objs["npix"] >= 4) & unsaturated & (ratio > 0) & (objs["b"] >= _MIN_STAR_B)
    if bright.sum() >= 5:
        # the peak-to-flux ratio of the stars gives the FWHM: robust in crowded fields and
        # for any PSF shape, unlike second moments or half-light radii; its lower quartile
        # (stars are less peaked than the cosmic rays that pass the cuts) against the same
        # quartile over random centring
        fwhm = _fwhm_from_peak_ratio(float(np.percentile(ratio[bright], _RATIO_PERCENTILE)))
    else:
        fwhm = cfg.default_fwhm_pix
    limit = min(cfg.peak_ratio_margin * _centred_peak_fraction(fwhm), 0.6)
    star = ratio <= limit
    if bright.sum() >= 5:
        # cosmic-ray tracks are thin: a star is at least as wide as most stars across its minor axis
        b_star = float(np.median(objs["b"][bright]))
        star &= objs["b"] >= cfg.min_width_fraction * b_star
    return x, y, flux, fwhm, int(np.count_nonzero(star))


def _sources_near(reach: np.ndarray, extraction: StarExtraction) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroids ``x, y`` [pixel] and aperture fluxes [adu] of every sep source whose rounded
    centroid falls on ``reach`` (the pixels near a flag): the star candidates of
    :func:`protect_stars`, extracted around the flags only."""
    import sep

    empty = np.zeros(0), np.zeros(0), np.zeros(0)
    work, mask = extraction.work, extraction.mask
    try:
        objs = extraction.around(reach)
    except Exception:  # sep refuses pathological frames: only the flag groups are candidates
        return empty
    if objs is None:
        return empty
    x, y = objs["x"].astype(float), objs["y"].astype(float)
    ny, nx = work.shape
    near = reach[np.clip(np.rint(y).astype(int), 0, ny - 1), np.clip(np.rint(x).astype(int), 0, nx - 1)]
    x, y = x[near], y[near]
    if x.size == 0:
        return empty
    flux, _, _ = sep.sum_circle(work, x, y, _RATIO_RADIUS, mask=mask, subpix=5)  # flux: no err needed
    return x, y, np.asarray(flux, float)


_SPARSE_MAX = 1 << 22  # gathered pixels beyond which the whole-frame filters are cheaper


def _square_offsets(half: int) -> tuple[np.ndarray, np.ndarray]:
    oy, ox = np.mgrid[-half : half + 1, -half : half + 1]
    return oy.ravel(), ox.ravel()


def ndimage_distance_reach(flags: np.ndarray, half: int) -> np.ndarray:
    """Pixels within ``half`` pixels (Chebyshev) of a flag.

    Marked square by square around the flags (indices clipped to the frame: a square cut
    by the border reaches the border pixels anyway), unless there are so many flags that
    one maximum filter of the frame is cheaper; the same pixels either way.
    """
    fy, fx = nonzero_2d(flags)
    oy, ox = _square_offsets(half)
    if fy.size * oy.size > _SPARSE_MAX:
        from scipy import ndimage

        return ndimage.maximum_filter(flags.astype(np.uint8), size=2 * half + 1, mode="constant") > 0
    ny, nx = flags.shape
    out = np.zeros(flags.shape, dtype=bool)
    out[np.clip(fy[:, None] + oy, 0, ny - 1), np.clip(fx[:, None] + ox, 0, nx - 1)] = True
    return out


def _local_maxima_near_flags(flags: np.ndarray, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns (row-major order) of the pixels on or next to a flag whose signal is at
    least that of every unflagged pixel of their 3x3 block (the block clipped at the edges)."""
    ny, nx = flags.shape
    fy, fx = nonzero_2d(flags)
    oy, ox = _square_offsets(1)
    if fy.size * oy.size * oy.size > _SPARSE_MAX:
        from scipy import ndimage

        unflagged = np.where(flags, -np.inf, signal)
        local_max = signal >= ndimage.maximum_filter(unflagged, size=3, mode="nearest")
        near_flags = ndimage.binary_dilation(flags, structure=np.ones((3, 3), bool))
        return nonzero_2d(local_max & near_flags)
    # the flags' neighbours (clipping at the border adds only pixels next to a flag anyway)
    near = np.unique(np.clip(fy[:, None] + oy, 0, ny - 1) * nx + np.clip(fx[:, None] + ox, 0, nx - 1))
    cy, cx = np.divmod(near, nx)
    by = np.clip(cy[:, None] + oy, 0, ny - 1)
    bx = np.clip(cx[:, None] + ox, 0, nx - 1)
    unflagged = np.where(flags[by, bx], -np.inf, signal[by, bx])
    local_max = signal[cy, cx] >= unflagged.max(axis=1)
    return cy[local_max], cx[local_max]


def _flag_group_centroids(flags: np.ndarray, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (x, y) [pixel] of the 3x3 blocks around every pixel on or next to a flag that
    is at least as bright as the unflagged pixels around it.

    Every local maximum counts, not one per flagged group: a star core grown into the
    flags of an adjacent cosmic ray is its own candidate.
    """
    if not flags.any():
        return np.zeros(0), np.zeros(0)
    ny, nx = flags.shape
    # a maximum among the unflagged pixels around it: a star core next to a cosmic ray, or
    # flagged itself, is a candidate even when the cosmic ray is brighter
    py, px = _local_maxima_near_flags(flags, signal)
    # 3x3 blocks (clipped at the edges) weighted by their positive signal
    oy, ox = (o.ravel() for o in np.mgrid[-1:2, -1:2])
    by = np.clip(py[:, None] + oy[None, :], 0, ny - 1)
    bx = np.clip(px[:, None] + ox[None, :], 0, nx - 1)
    w = np.clip(signal[by, bx], 0, None).astype(float)
    total = w.sum(axis=1)
    safe = np.where(total > 0, total, 1.0)
    xs = np.where(total > 0, (w * bx).sum(axis=1) / safe, px.astype(float))
    ys = np.where(total > 0, (w * by).sum(axis=1) / safe, py.astype(float))
    return xs, ys


def _explained_batch(
    flags_image: np.ndarray,
    signal: np.ndarray,
    noise: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    sigma: float,
    r: float,
    cfg: StarGuardConfig,
    *,
    ignore: np.ndarray | None,
    saturated: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """For every candidate star at (xs, ys), which flagged pixels of its disk a star there explains.

    A PSF (pixel-integrated Gaussian of width ``sigma``) plus a plane (a neighbour's wing,
    a sky error) is fitted by weighted least squares to the disk's pixels that are not
    flagged, or flagged below ``nsigma`` (the cosmic-ray step's growth into a star's wings
    or the sky around a cosmic ray), so that a cosmic ray on a star, or one taken for a
    star, cannot explain itself. When the fit is star-shaped (residual power within twice
    the noise plus ``max_misfit`` of the model's), a flagged pixel is explained when it
    stays below ``(1 + psf_tolerance)`` x the model plus ``nsigma`` sigma. All candidates
    are fitted together (batched normal equations). Returns the pixel rows, columns
    (n, m) and the explained mask (n, m), or None without candidates.
    """
    if xs.size == 0:
        return None
    ny, nx = flags_image.shape
    half = math.ceil(r)
    oy, ox = (o.ravel() for o in np.mgrid[-half : half + 1, -half : half + 1])
    gy = np.rint(ys).astype(int)[:, None] + oy[None, :]
    gx = np.rint(xs).astype(int)[:, None] + ox[None, :]
    inside = (gy >= 0) & (gy < ny) & (gx >= 0) & (gx < nx)
    gy, gx = np.clip(gy, 0, ny - 1), np.clip(gx, 0, nx - 1)
    dx, dy = gx - xs[:, None], gy - ys[:, None]
    disk = inside & (dx * dx + dy * dy <= r * r)
    if ignore is not None:
        disk &= ~ignore[gy, gx]
    if saturated is not None:
        disk &= ~saturated[gy, gx]
    flags = flags_image[gy, gx] & disk
    obs = signal[gy, gx].astype(float)
    sig = noise[gy, gx].astype(float)
    use = disk & (~flags | (obs < cfg.nsigma * sig))
    keep = flags.any(axis=1) & (use.sum(axis=1) >= 8)
    if not keep.any():
        return None
    gy, gx, dx, dy, flags, obs, sig, use = (a[keep] for a in (gy, gx, dx, dy, flags, obs, sig, use))
    unit = _pixel_fraction(dx, dy, sigma)
    design = np.stack([unit, np.ones_like(unit), dx, dy], axis=-1)  # (n, m, 4)
    w = use.astype(float)
    normal = np.einsum("nmi,nm,nmj->nij", design, w, design)
    normal += 1e-9 * np.trace(normal, axis1=1, axis2=2)[:, None, None] * np.eye(4)[None]
    rhs = np.einsum("nmi,nm,nm->ni", design, w, obs)
    try:
        coef = np.linalg.solve(normal, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        coef = np.stack([np.linalg.lstsq(a, b, rcond=None)[0] for a, b in zip(normal, rhs, strict=True)])
    fit = np.einsum("nmi,ni->nm", design, coef)
    star = coef[:, :1] * unit
    resid_power = np.sum(w * (obs - fit) ** 2, axis=1)
    allowed = cfg.max_misfit * np.sum(w * star**2, axis=1) + 2.0 * np.sum(w * sig**2, axis=1)
    star_shaped = (coef[:, 0] > 0) & (resid_power <= allowed)
    excess = obs - (fit - star) - (1.0 + cfg.psf_tolerance) * star
    explained = flags & star_shaped[:, None] & (excess <= cfg.nsigma * sig)
    return gy, gx, explained


def protect_stars(
    cr_mask: np.ndarray,
    data: np.ndarray,
    sky: np.ndarray,
    var: np.ndarray,
    *,
    ignore: np.ndarray | None = None,
    saturated: np.ndarray | None = None,
    config: StarGuardConfig | None = None,
    stars: tuple[np.ndarray, np.ndarray, np.ndarray, float, int] | None = None,
    noise: np.ndarray | None = None,
    extraction: StarExtraction | None = None,
) -> StarGuardResult:
    """Clear the cosmic-ray flags of ``cr_mask`` that the stars of ``data`` explain.

    ``data`` [adu, sky included], ``sky`` [adu] and ``var`` [adu^2] as given to the
    cosmic-ray step; ``ignore`` marks unusable pixels; ``saturated`` the saturated raw
    pixels: flags around a saturated star (a compact saturated patch of at least 4 pixels,
    at least 2 wide both ways, unlike a cosmic-ray track) are cleared out to twice its
    radius plus ``protect_radius_fwhm`` FWHM, where no model of the clipped star holds.
    ``stars`` is what :func:`find_stars` returned, when already known (its FWHM and star
    count are used; the candidates are every source near a flag, found here); ``noise`` is
    ``sqrt(var)`` (floored at 1e-6), when already computed; ``extraction`` the frame's
    :class:`StarExtraction` that :func:`find_stars` used (shared). Returns a new mask.
    """
    cfg = config or StarGuardConfig()
    out = np.array(cr_mask, dtype=bool, copy=True)
    if not cfg.enabled or not out.any():
        return StarGuardResult(out, cfg.default_fwhm_pix, 0, 0)
    if noise is None:
        noise = np.sqrt(np.clip(var, 1e-12, None))
    if extraction is None:
        extraction = StarExtraction(data - sky, noise, ignore, cfg)
    if stars is None:
        stars = find_stars(
            data, sky, noise, ignore=ignore, saturated=saturated, config=cfg, extraction=extraction
        )
    fwhm, n_star_like = stars[3], stars[4]
    if fwhm >= cfg.max_fwhm_pix:
        return StarGuardResult(out, fwhm, n_star_like, 0)
    ny, nx = out.shape
    n_cleared = 0
    n_sat_stars = 0
    if saturated is not None and saturated.any():
        from scipy import ndimage

        labels, _ = ndimage.label(saturated)
        for k, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
            area = int(np.count_nonzero(labels[sl] == k))
            if area < 4 or min(h, w) < 2:
                continue  # a saturated cosmic-ray pixel or track, not a star
            n_sat_stars += 1
            yc, xc = (sl[0].start + sl[0].stop - 1) / 2.0, (sl[1].start + sl[1].stop - 1) / 2.0
            reach = 2.0 * math.sqrt(area / math.pi) + cfg.protect_radius_fwhm * fwhm
            y0, y1 = max(0, int(yc - reach)), min(ny, int(yc + reach) + 2)
            x0, x1 = max(0, int(xc - reach)), min(nx, int(xc + reach) + 2)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            inside = ((yy - yc) ** 2 + (xx - xc) ** 2 <= reach * reach) & out[y0:y1, x0:x1]
            if inside.any():
                n_cleared += int(inside.sum())
                out[y0:y1, x0:x1][inside] = False
    signal = extraction.work  # data - sky, as the sources were found on it
    sigma = fwhm * _GAUSS_SIGMA_PER_FWHM
    r = max(cfg.protect_radius_fwhm * fwhm, 2.5)
    half = math.ceil(r)
    # only candidates with a flag within reach need a fit: the sources there, and every group
    # of flagged pixels, centred on its brightest pixel (a faint star lost in a bright
    # neighbour's isophote is still found by its own wings)
    reach = ndimage_distance_reach(out, half)
    xs, ys, fluxes = _sources_near(reach, extraction)
    gx_, gy_ = _flag_group_centroids(out, signal)
    xs = np.concatenate([xs, gx_])
    ys = np.concatenate([ys, gy_])
    fluxes = np.concatenate([fluxes, np.ones(gx_.size)])
    if xs.size == 0:
        return StarGuardResult(out, fwhm, n_sat_stars, n_cleared)
    ixs = np.clip(np.rint(xs).astype(int), 0, nx - 1)
    iys = np.clip(np.rint(ys).astype(int), 0, ny - 1)
    near_flag = reach[iys, ixs] & (fluxes > 0)
    for _ in range(2):  # a second pass sees the flags the first one cleared as usable pixels
        cleared = _explained_batch(
            out,
            signal,
            noise,
            xs[near_flag],
            ys[near_flag],
            sigma,
            r,
            cfg,
            ignore=ignore,
            saturated=saturated,
        )
        if cleared is None or not cleared[2].any():
            break
        gy, gx, hit = cleared
        before = int(np.count_nonzero(out))
        out[gy[hit], gx[hit]] = False
        n_cleared += before - int(np.count_nonzero(out))
    return StarGuardResult(out, fwhm, n_star_like + n_sat_stars, n_cleared)
