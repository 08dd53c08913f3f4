"""Synthetic star catalogue: positions, r magnitudes from a power law, realistic g - r colours."""

from __future__ import annotations

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

__all__ = ["make_star_catalog", "sample_colours", "sample_magnitudes"]


def sample_magnitudes(
    n: int, *, mag_range: tuple[float, float], slope: float, rng: np.random.Generator
) -> np.ndarray:
    """Magnitudes with number counts ``dN/dm ~ 10 ** (slope * m)`` in ``mag_range`` (more faint stars)."""
    lo, hi = mag_range
    if slope == 0:
        return rng.uniform(lo, hi, n)
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return np.log10(a + rng.uniform(0.0, 1.0, n) * (b - a)) / slope


def sample_colours(n: int, *, rng: np.random.Generator) -> np.ndarray:
    """g - r colours [mag] in 0.2..1.4: a mix of F/G/K disc stars (70 %) and red K/M dwarfs (30 %)."""
    red = rng.uniform(0.0, 1.0, n) < 0.3
    colour = np.where(red, rng.normal(1.2, 0.12, n), rng.normal(0.55, 0.2, n))
    return np.clip(colour, 0.2, 1.4)


def make_star_catalog(
    n_stars: int,
    *,
    wcs: WCS,
    shape: tuple[int, int],
    margin_pix: float,
    r_mag_range: tuple[float, float],
    mag_slope: float,
    rng: np.random.Generator,
    pm_rms_mas_yr: float = 6.0,
) -> Table:
    """Random stars spread uniformly over a detector footprint and its margin.

    Parameters
    ----------
    n_stars
        Number of stars.
    wcs
        Celestial WCS of the footprint (0-based pixels are mapped with SIP).
    shape
        Footprint ``(ny, nx)`` [pixel].
    margin_pix
        Extra border around the footprint [pixel].
    r_mag_range, mag_slope
        r magnitude range [mag] and slope of ``log10 N(m)``.
    rng
        Random generator.
    pm_rms_mas_yr
        rms proper motion per axis [mas/yr]; informational (positions are for the
        epoch of observation).

    Returns
    -------
    astropy.table.Table
        Columns ``id, ra_deg, dec_deg, r_mag, g_mag, g_r, pmra_mas_yr, pmdec_mas_yr``.
    """
    ny, nx = shape
    x = rng.uniform(-0.5 - margin_pix, nx - 0.5 + margin_pix, n_stars)
    y = rng.uniform(-0.5 - margin_pix, ny - 0.5 + margin_pix, n_stars)
    ra, dec = wcs.all_pix2world(x, y, 0)
    r_mag = sample_magnitudes(n_stars, mag_range=r_mag_range, slope=mag_slope, rng=rng)
    g_r = sample_colours(n_stars, rng=rng)
    pmra = rng.normal(0.0, pm_rms_mas_yr, n_stars)
    pmdec = rng.normal(0.0, pm_rms_mas_yr, n_stars)
    table = Table(
        {
            "id": np.arange(n_stars, dtype=np.int32),
            "ra_deg": np.mod(np.asarray(ra, dtype=float), 360.0),
            "dec_deg": np.asarray(dec, dtype=float),
            "r_mag": r_mag,
            "g_mag": r_mag + g_r,
            "g_r": g_r,
            "pmra_mas_yr": pmra,
            "pmdec_mas_yr": pmdec,
        }
    )
    for name, unit in (
        ("ra_deg", "deg"),
        ("dec_deg", "deg"),
        ("r_mag", "mag"),
        ("g_mag", "mag"),
        ("g_r", "mag"),
    ):
        table[name].unit = unit
    table["pmra_mas_yr"].unit = "mas / yr"
    table["pmdec_mas_yr"].unit = "mas / yr"
    return table
