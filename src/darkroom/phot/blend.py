"""Blend flags of an aperture-photometry table from the positions of its neighbours."""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from darkroom.phot.aperture import ApertureConfig
from darkroom.phot.flags import PhotFlag

__all__ = ["blend_flags"]


def blend_flags(phot: Table, nb_x: np.ndarray, nb_y: np.ndarray, *, config: ApertureConfig) -> None:
    """Set PhotFlag.BLENDED per aperture from these neighbours only (in place).

    A neighbour within ``radius + blend_margin_fwhm * FWHM`` that is farther than
    ``self_match_pix`` (not the source itself) blends the aperture.
    """
    if not len(phot):
        return
    from scipy.spatial import cKDTree

    x = np.asarray(phot["x"], float)
    y = np.asarray(phot["y"], float)
    nn = np.full(x.size, np.inf)
    if nb_x.size:
        k = min(3, nb_x.size)
        dist, _ = cKDTree(np.column_stack([nb_x, nb_y])).query(np.column_stack([x, y]), k=k)
        dist = np.asarray(dist).reshape(x.size, k)
        nn = np.where(dist <= config.self_match_pix, np.inf, dist).min(axis=1)
    fwhm = phot.meta.get("fwhm_pix") or 1.0
    margin = config.blend_margin_fwhm * fwhm
    bit = int(PhotFlag.BLENDED)
    for k, radius in enumerate(phot.meta["aperture_radii_pix"]):
        flags = np.asarray(phot[f"flags_ap{k}"], np.int64) & ~bit
        phot[f"flags_ap{k}"] = (flags | np.where(nn < radius + margin, bit, 0)).astype(np.int32)
    phot["flags"] = phot[f"flags_ap{int(phot.meta['ref_aperture'])}"]
