"""Blend flags of an aperture-photometry table from the positions of its neighbours."""

from __future__ import annotations

import numpy as np
from astropy.table import Column, Table

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
        _set_flags(phot, f"flags_ap{k}", (flags | np.where(nn < radius + margin, bit, 0)).astype(np.int32))
    _set_flags(phot, "flags", phot[f"flags_ap{int(phot.meta['ref_aperture'])}"])


def _plain(col: Column) -> bool:
    return col.unit is None and col.description is None and col.format is None and not col.meta


def _set_flags(phot: Table, name: str, values: np.ndarray | Column) -> None:
    """``phot[name] = values``, written into the column in place when that gives the same column
    (an int32 ``Column`` without unit, description, format or meta, as
    :func:`~darkroom.phot.aperture_photometry` makes its flags): replacing a column costs ~25 us
    of astropy's bookkeeping, and a frame sets five."""
    col = phot[name]
    same = (
        type(col) is Column
        and col.dtype == np.int32
        and np.asarray(values).dtype == np.int32
        and _plain(col)
        and (not isinstance(values, Column) or _plain(values))
    )
    if same:
        col[:] = values
    else:
        phot[name] = values
