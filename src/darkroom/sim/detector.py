"""The simulated detector: bias structure, dark current, defects, flat field, cosmic rays.

All maps have shape ``(ny, nx)``; pixel (row i, column j) has centre ``(x, y) = (j, i)``.
Units: bias in adu, dark current in electron/s/pixel, flat response dimensionless
(median 1), cosmic-ray charge in electrons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from darkroom.sim._rng import stream
from darkroom.sim.config import SimConfig

__all__ = ["DetectorModel", "cosmic_rays", "make_detector", "to_adu"]


@dataclass(frozen=True)
class DetectorModel:
    """Truth of the detector for one night."""

    bias_adu: np.ndarray  #: (ny, nx) float32 bias level and structure [adu]
    dark_current_e_s: np.ndarray  #: (ny, nx) float32 dark current incl. hot pixels and bad columns [e/s]
    flat: np.ndarray  #: (ny, nx) float32 multiplicative response, median 1 over good pixels
    hot_pixels: Table  #: x, y (0-based), rate_e_s
    bad_columns: tuple[int, ...]  #: 0-based x of bad columns

    def bad_pixel_mask(self) -> np.ndarray:
        """Boolean ``(ny, nx)`` map of the hot pixels and bad columns."""
        mask = np.zeros(self.bias_adu.shape, dtype=bool)
        mask[np.asarray(self.hot_pixels["y"], dtype=int), np.asarray(self.hot_pixels["x"], dtype=int)] = True
        mask[:, list(self.bad_columns)] = True
        return mask


def _bias(config: SimConfig) -> np.ndarray:
    rng = stream(config.seed, "bias")
    ny, nx = config.shape
    cols = rng.normal(0.0, config.bias_column_rms_adu, nx)
    # a slow ripple along the serial register, plus the per-column offsets
    xs = np.arange(nx) / nx
    ripple = 0.5 * config.bias_column_rms_adu * np.sin(2 * np.pi * (3.0 * xs + rng.uniform()))
    rows = config.bias_gradient_adu * (np.arange(ny) / max(ny - 1, 1) - 0.5)
    bias = config.bias_level_adu + rows[:, None] + (cols + ripple)[None, :]
    return bias.astype(np.float32)


def _dark(config: SimConfig) -> tuple[np.ndarray, Table]:
    rng = stream(config.seed, "dark")
    ny, nx = config.shape
    dark = config.dark_current_e_s * np.clip(1.0 + 0.1 * rng.standard_normal((ny, nx)), 0.0, None)
    hrng = stream(config.seed, "hot")
    n_hot = min(config.n_hot_pixels, ny * nx // 4)
    flat_idx = hrng.choice(ny * nx, size=n_hot, replace=False)
    lo, hi = config.hot_pixel_rate_e_s
    rates = np.exp(hrng.uniform(np.log(lo), np.log(hi), n_hot))
    hy, hx = np.divmod(flat_idx, nx)
    order = np.lexsort((hx, hy))
    hx, hy, rates = hx[order], hy[order], rates[order]
    dark[hy, hx] += rates
    for col in config.bad_columns_x:
        dark[:, col] += config.bad_column_dark_e_s
    hot = Table(
        {"x": hx.astype(np.int32), "y": hy.astype(np.int32), "rate_e_s": rates},
        meta={"description": "hot pixels, 0-based (x, y); rate_e_s is the extra dark current [electron/s]"},
    )
    hot["rate_e_s"].unit = "electron / s"
    return dark.astype(np.float32), hot


def _flat(config: SimConfig) -> np.ndarray:
    rng = stream(config.seed, "flat")
    ny, nx = config.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    xc, yc = (nx - 1) / 2.0, (ny - 1) / 2.0
    r2 = ((xx - xc) ** 2 + (yy - yc) ** 2) / (xc**2 + yc**2)
    flat = 1.0 - config.vignetting * r2
    d_lo, d_hi = config.dust_depth
    r_lo, r_hi = config.dust_radius_pix
    for _ in range(config.n_dust_rings):
        cx, cy = rng.uniform(0, nx), rng.uniform(0, ny)
        radius = rng.uniform(r_lo, r_hi)
        depth = rng.uniform(d_lo, d_hi)
        width = 0.25 * radius
        half = int(radius + 3 * width) + 1
        x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 1, nx)
        y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        rr = np.hypot(xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy)
        # a doughnut: the out-of-focus shadow of a dust grain, darker at its rim
        shadow = depth * (np.exp(-0.5 * ((rr - radius) / width) ** 2) + 0.4 * (rr < radius))
        flat[y0:y1, x0:x1] *= 1.0 - np.minimum(shadow, 0.9)
    flat *= 1.0 + config.prnu_rms * rng.standard_normal((ny, nx))
    good = np.ones(nx, dtype=bool)
    good[list(config.bad_columns_x)] = False
    flat /= np.median(flat[:, good])
    for col in config.bad_columns_x:
        flat[:, col] *= config.bad_column_response
    return flat.astype(np.float32)


def make_detector(config: SimConfig) -> DetectorModel:
    """Bias, dark current, defects and flat field of the night (deterministic from the seed)."""
    dark, hot = _dark(config)
    return DetectorModel(
        bias_adu=_bias(config),
        dark_current_e_s=dark,
        flat=_flat(config),
        hot_pixels=hot,
        bad_columns=tuple(sorted(config.bad_columns_x)),
    )


def cosmic_rays(
    config: SimConfig, exptime_s: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cosmic-ray hits of one exposure.

    The number of events is Poisson with mean ``rate * area * exptime``; each is a
    straight track (length 0-12 pixels, most short) whose pixels receive a charge
    drawn log-uniformly from ``config.cosmic_ray_e``.

    Returns
    -------
    flat_index, charge_e
        Raveled pixel indices (unique, sorted) and the charge deposited in each [electron].
    """
    ny, nx = config.shape
    area_cm2 = ny * nx * (config.pixel_size_um * 1e-4) ** 2
    n_events = int(rng.poisson(config.cosmic_ray_rate_cm2_s * area_cm2 * exptime_s))
    if n_events == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    x0 = rng.uniform(0, nx, n_events)
    y0 = rng.uniform(0, ny, n_events)
    length = np.minimum(rng.exponential(3.0, n_events), 12.0)
    angle = rng.uniform(0, np.pi, n_events)
    idx_list = []
    for k in range(n_events):
        n_steps = int(np.ceil(length[k] * 2)) + 1
        s = np.linspace(0.0, length[k], n_steps)
        px = np.floor(x0[k] + s * np.cos(angle[k])).astype(np.int64)
        py = np.floor(y0[k] + s * np.sin(angle[k])).astype(np.int64)
        ok = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        idx_list.append(np.unique(py[ok] * nx + px[ok]))
    idx = np.concatenate(idx_list)
    lo, hi = config.cosmic_ray_e
    charge = np.exp(rng.uniform(np.log(lo), np.log(hi), len(idx)))
    uniq, inverse = np.unique(idx, return_inverse=True)
    total = np.zeros(len(uniq))
    np.add.at(total, inverse, charge)
    return uniq, total


def to_adu(
    electrons: np.ndarray, bias_adu: np.ndarray, config: SimConfig, rng: np.random.Generator
) -> np.ndarray:
    """Read out: add read noise, convert to adu on the bias, saturate and quantise to uint16.

    ``electrons`` is the charge already carrying its Poisson noise. Pixels whose value
    reaches ``saturation_adu`` read exactly ``saturation_adu`` (full well, no blooming).
    """
    ny, nx = electrons.shape
    adu = electrons / config.gain_e_per_adu
    adu += bias_adu
    if config.read_noise_e > 0:
        adu += rng.standard_normal((ny, nx), dtype=np.float32) * np.float32(
            config.read_noise_e / config.gain_e_per_adu
        )
    np.minimum(adu, config.saturation_adu, out=adu)
    np.clip(adu, 0.0, 65535.0, out=adu)
    return np.rint(adu).astype(np.uint16)
