"""PNG plot of a light curve (matplotlib Agg, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table

from darkroom.errors import BadInputError
from darkroom.timeseries.lightcurve import bin_lightcurve
from darkroom.timeseries.quality import LightCurveFlag

__all__ = ["break_at_gaps", "plot_lightcurve"]

_QUALITY_BITS = int(LightCurveFlag.LOW_TRANSPARENCY | LightCurveFlag.NO_ENSEMBLE)


def break_at_gaps(
    t_days: np.ndarray, y: np.ndarray, e: np.ndarray, *, bin_minutes: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binned points with a NaN row inserted wherever two bins are more than 1.5 bin widths
    apart, so a line drawn through them breaks at gaps (clouds, a pointing) instead of
    joining across them. Times in days; ``bin_minutes`` the bin width."""
    t_days, y, e = (np.asarray(a, float) for a in (t_days, y, e))
    if t_days.size < 2:
        return t_days, y, e
    cut = np.flatnonzero(np.diff(t_days) > 1.5 * bin_minutes / 1440.0) + 1
    return (np.insert(t_days, cut, np.nan), np.insert(y, cut, np.nan), np.insert(e, cut, np.nan))


def plot_lightcurve(
    table: Table,
    path: str | Path,
    *,
    bin_minutes: float = 10.0,
    title: str | None = None,
    time_col: str = "bjd_tdb",
    contacts: dict[str, float] | None = None,
) -> Path:
    """Plot a :func:`~darkroom.timeseries.lightcurve.build_lightcurve` table to a PNG.

    Top panel: ``rel_flux`` (or flux normalised to its median when no differential flux
    exists) per filter, individual points in light colour, epochs with quality flags as
    crosses, and the curve binned to ``bin_minutes``. Bottom panel: the comparison
    ensemble's total flux normalised to its median (a drop means clouds). ``contacts``:
    predicted transit times [BJD_TDB, d] ("ingress", "mid", "egress") drawn as red lines.
    """
    if len(table) == 0:
        raise BadInputError("empty light curve: nothing to plot")
    if time_col not in table.colnames:
        time_col = "mjd_utc"
    t_all = np.asarray(table[time_col], float)
    t0 = float(np.floor(np.nanmin(t_all)))
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib only when plotting
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 6.0), dpi=110)
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    bands = np.asarray(table["filter"]).astype(str) if "filter" in table.colnames else np.full(len(table), "")
    colours = ["tab:blue", "tab:green", "tab:red", "tab:purple", "tab:orange", "tab:brown"]
    have_rel = "rel_flux" in table.colnames and np.isfinite(np.asarray(table["rel_flux"], float)).any()
    ylabel = "relative flux" if have_rel else "flux / median"
    for k, band in enumerate(np.unique(bands)):
        sel = bands == band
        c = colours[k % len(colours)]
        t = t_all[sel] - t0
        if have_rel:
            y = np.asarray(table["rel_flux"], float)[sel]
            e = np.asarray(table["rel_flux_err"], float)[sel]
        else:
            f = np.asarray(table["flux"], float)[sel]
            med = np.nanmedian(f)
            y = f / med
            e = np.asarray(table["flux_err"], float)[sel] / med
        flags = (
            np.asarray(table["flags"], np.int64)[sel]
            if "flags" in table.colnames
            else np.zeros(sel.sum(), int)
        )
        bad = (flags & _QUALITY_BITS) != 0
        ax.errorbar(
            t[~bad], y[~bad], yerr=e[~bad], fmt=".", color=c, alpha=0.35, ms=4, lw=0.6, label=f"{band} points"
        )
        if bad.any():
            ax.plot(t[bad], y[bad], "x", color="0.4", ms=5, label=f"{band} flagged")
        tb, yb, eb, _ = bin_lightcurve(t[~bad], y[~bad], e[~bad], bin_minutes=bin_minutes)
        tb, yb, eb = break_at_gaps(tb, yb, eb, bin_minutes=bin_minutes)
        if tb.size:
            ax.errorbar(
                tb, yb, yerr=eb, fmt="o-", color=c, ms=4, lw=1.2, label=f"{band} {bin_minutes:g}-min bins"
            )
        if "ens_flux" in table.colnames:
            ens = np.asarray(table["ens_flux"], float)[sel]
            if np.isfinite(ens).any():
                ax2.plot(t, ens / np.nanmedian(ens), ".", color=c, ms=4, label=f"{band} ensemble")
    if contacts and time_col == "bjd_tdb":
        for key, ls in (("ingress", "--"), ("mid", "-"), ("egress", "--")):
            if key in contacts:
                ax.axvline(
                    contacts[key] - t0, color="tab:red", ls=ls, lw=1.0, alpha=0.7, label=f"predicted {key}"
                )
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    ax2.set_ylabel("ensemble / median")
    ax2.set_xlabel(f"{'BJD_TDB' if time_col == 'bjd_tdb' else time_col} - {t0:.0f} [d]")
    ax2.grid(alpha=0.3)
    if title is None and "target_id" in table.meta:
        title = f"source {table.meta['target_id']}"
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path
