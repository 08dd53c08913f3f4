"""PNG plot of a target's survey light curves: magnitude against time, one colour per band,
flagged epochs as crosses (matplotlib Agg, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from darkroom.errors import BadInputError

__all__ = ["plot_survey_lightcurve"]

_COLOURS = {"g": "tab:green", "r": "tab:red", "i": "tab:purple", "u": "tab:blue", "z": "tab:brown"}


def plot_survey_lightcurve(table: Table, path: str | Path, *, title: str | None = None) -> Path:
    """Plot columns ``mjd``, ``mag``, ``magerr``, ``band`` (and ``catflags``: non-zero epochs are
    drawn as crosses) to a PNG; magnitudes grow downwards."""
    if len(table) == 0:
        raise BadInputError("empty light curve: nothing to plot")
    fig = Figure(figsize=(9.0, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    bands = np.asarray(table["band"]).astype(str)
    mjd = np.asarray(table["mjd"], float)
    mag = np.asarray(table["mag"], float)
    err = np.asarray(table["magerr"], float)
    flagged = (
        np.asarray(table["catflags"]) != 0 if "catflags" in table.colnames else np.zeros(len(table), bool)
    )
    for band in np.unique(bands):
        sel = bands == band
        c = _COLOURS.get(band, "tab:gray")
        good, bad = sel & ~flagged, sel & flagged
        ax.errorbar(
            mjd[good],
            mag[good],
            yerr=err[good],
            fmt="o",
            ms=2.5,
            lw=0.6,
            color=c,
            label=f"{band} ({good.sum()})",
        )
        if bad.any():
            ax.plot(mjd[bad], mag[bad], "x", ms=4, color=c, alpha=0.7, label=f"{band} flagged ({bad.sum()})")
    ax.invert_yaxis()
    ax.set_xlabel("MJD")
    ax.set_ylabel("magnitude")
    ax.legend(fontsize=7, ncol=3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
