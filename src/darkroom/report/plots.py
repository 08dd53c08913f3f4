"""PNG figures of a night report, returned as bytes (matplotlib Agg, no pyplot state).

Every PNG is deterministic: the same input gives the same bytes (no time stamp and
no software tag in the PNG metadata).
"""

from __future__ import annotations

import io
import math

import matplotlib.dates as mdates
import matplotlib.image as mimage
import numpy as np
from astropy.table import Table
from astropy.time import Time
from astropy.visualization import ZScaleInterval
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from darkroom.errors import BadInputError
from darkroom.report.model import (
    AnalysisSummary,
    FrameStatus,
    TargetLightCurve,
    cell,
    float_column,
    frame_status,
    frame_times_mjd,
)
from darkroom.timeseries.lightcurve import bin_lightcurve
from darkroom.timeseries.plot import break_at_gaps
from darkroom.timeseries.quality import LightCurveFlag

__all__ = [
    "downsample_block_mean",
    "efficiency_png",
    "empty_panel_text",
    "lightcurve_png",
    "quality_png",
    "thumbnail_png",
]

_PNG_METADATA = {"Software": None}
_COLOURS = ("tab:blue", "tab:green", "tab:red", "tab:purple", "tab:orange", "tab:brown", "tab:cyan")
#: Light-curve epochs drawn as flagged (crosses) rather than points.
_LC_BAD_BITS = int(LightCurveFlag.LOW_TRANSPARENCY | LightCurveFlag.NO_ENSEMBLE)


def _figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=_PNG_METADATA)
    return buf.getvalue()


def _mjd_to_datenum(mjd: np.ndarray) -> np.ndarray:
    """MJD (UTC) to matplotlib date numbers (days since 1970-01-01)."""
    return np.asarray(mjd, float) - 40587.0


def _str_column(table: Table, column: str) -> np.ndarray:
    """A column as stripped text ("" where missing), object dtype."""
    out = np.full(len(table), "", dtype=object)
    if column in table.colnames:
        for i in range(len(table)):
            value = cell(table, column, i)
            if value is not None:
                out[i] = str(value).strip()
    return out


def empty_panel_text(frames: Table, column: str) -> str:
    """The text of an empty panel: the frames' most common reason (column ``<column>_reason``)."""
    reasons = [r for r in _str_column(frames, f"{column}_reason") if r]
    if not reasons:
        return "no values"
    values, counts = np.unique(np.array(reasons, dtype=str), return_counts=True)
    k = int(np.argmax(counts))
    text = str(values[k]) if len(values[k]) <= 110 else str(values[k])[:107] + "..."
    return f"no values: {text}" + (f" ({counts[k]} of {len(reasons)} frames)" if len(values) > 1 else "")


def quality_png(frames: Table, *, title: str | None = None, dpi: int = 100) -> bytes:
    """Four stacked panels against UTC time: FWHM, sky, zero point, astrometric rms.

    Frames are coloured by filter; poor and failed frames (see
    :func:`~darkroom.report.model.frame_status`) are circled in red; frames whose
    astrometry failed get a red triangle at the foot of the astrometry panel.

    Raises
    ------
    BadInputError
        When no frame has a usable time.
    """
    mjd = frame_times_mjd(frames)
    has_time = np.isfinite(mjd)
    if not has_time.any():
        raise BadInputError("no frame has a usable time_utc: nothing to plot against")
    x = _mjd_to_datenum(mjd)
    filters = _str_column(frames, "filter")
    status = np.array([frame_status(frames, i) for i in range(len(frames))], dtype=object)
    poor = (status == FrameStatus.POOR) | (status == FrameStatus.FAILED)
    astrom_failed = np.array([s.lower() == "failed" for s in _str_column(frames, "astrom_flag")], dtype=bool)

    panels = (
        ("fwhm_arcsec", None, "FWHM [arcsec]"),
        ("sky_adu", None, "sky [adu]"),
        ("zero_point", "zero_point_err", "zero point [mag]"),
        ("astrom_rms_arcsec", None, "astrom rms [arcsec]"),
    )
    fig = Figure(figsize=(9.0, 9.0), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True)
    bands = sorted(set(filters[has_time]))
    for ax, (column, err_column, label) in zip(axes, panels, strict=True):
        y = float_column(frames, column)
        err = float_column(frames, err_column) if err_column else None
        ok = has_time & np.isfinite(y)
        for k, band in enumerate(bands):
            sel = ok & (filters == band)
            if not sel.any():
                continue
            ax.errorbar(
                x[sel],
                y[sel],
                yerr=None if err is None else np.where(np.isfinite(err[sel]), err[sel], 0.0),
                fmt="o",
                ms=4,
                lw=0.8,
                color=_COLOURS[k % len(_COLOURS)],
                label=band or "no filter",
            )
        bad = ok & poor
        if bad.any():
            ax.plot(x[bad], y[bad], "o", ms=10, mfc="none", mec="red", mew=1.5, label="poor / failed frame")
        if column == "astrom_rms_arcsec" and (has_time & astrom_failed).any():
            sel = has_time & astrom_failed
            ax.plot(
                x[sel],
                np.full(sel.sum(), 0.04),
                "^",
                color="red",
                ms=7,
                transform=ax.get_xaxis_transform(),
                label="astrometry failed",
            )
        if not ok.any():
            ax.text(
                0.5,
                0.5,
                empty_panel_text(frames, column),
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="0.4",
                wrap=True,
                fontsize=8,
            )
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        axes[0].legend(handles, labels, fontsize=7, loc="best", ncols=min(4, len(labels)))
    lo, hi = np.nanmin(x), np.nanmax(x)
    pad = max((hi - lo) * 0.03, 5.0 / 1440.0)
    axes[-1].set_xlim(lo - pad, hi + pad)
    axes[-1].xaxis.set_major_locator(mdates.AutoDateLocator(minticks=4, maxticks=10))
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    first = Time(np.nanmin(mjd), format="mjd", scale="utc").to_datetime()
    axes[-1].set_xlabel(f"time [UTC], from {first:%Y-%m-%d %H:%M}")
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    return _figure_png(fig)


def downsample_block_mean(image: np.ndarray, *, max_pix: int) -> np.ndarray:
    """Average ``image`` (ny, nx) in square blocks so that its longest side is <= ``max_pix``.

    NaN pixels are ignored; a block with no finite pixel is NaN. Partial blocks at
    the top and right edges are averaged over the pixels they hold.
    """
    data = np.asarray(image, float)
    if data.ndim != 2 or data.size == 0:
        raise BadInputError(f"image must be a non-empty 2-D array, got shape {data.shape}")
    if max_pix < 1:
        raise BadInputError(f"max_pix must be >= 1, got {max_pix}")
    factor = max(1, math.ceil(max(data.shape) / max_pix))
    if factor == 1:
        return data.copy()
    ny, nx = data.shape
    oy, ox = math.ceil(ny / factor), math.ceil(nx / factor)
    padded = np.full((oy * factor, ox * factor), np.nan)
    padded[:ny, :nx] = data
    blocks = padded.reshape(oy, factor, ox, factor)
    finite = np.isfinite(blocks)
    n = finite.sum(axis=(1, 3))
    total = np.where(finite, blocks, 0.0).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _block_any(mask: np.ndarray, *, max_pix: int) -> np.ndarray:
    """1.0 where any pixel of a block is set (a mask shrunk so single bad pixels stay visible)."""
    ny, nx = mask.shape
    f = max(1, int(np.ceil(max(ny, nx) / max_pix)))
    pad = np.zeros((-(-ny // f) * f, -(-nx // f) * f), bool)
    pad[:ny, :nx] = mask
    return pad.reshape(pad.shape[0] // f, f, pad.shape[1] // f, f).any(axis=(1, 3)).astype(np.float32)


def thumbnail_png(image: np.ndarray, *, max_pix: int = 256, mask: bool = False) -> bytes:
    """Grey-scale PNG of a 2-D image, block-averaged to ``max_pix`` and z-scaled.

    Row 0 of ``image`` (shape (ny, nx)) is drawn at the bottom, as FITS viewers do.
    Pixels without a finite value are dark red. With ``mask`` (a bad-pixel mask: non-zero
    is bad) a block is white when any of its pixels is bad, on a dark grey ground: a
    block average would drown a few bad pixels in black.
    """
    if mask:
        shrunk = _block_any(np.nan_to_num(np.asarray(image, float)) != 0, max_pix=max_pix)
        buf = io.BytesIO()
        mimage.imsave(
            buf,
            shrunk,
            vmin=-0.25,
            vmax=1.0,
            cmap="gray",
            origin="lower",
            format="png",
            metadata=_PNG_METADATA,
        )
        return buf.getvalue()
    small = downsample_block_mean(image, max_pix=max_pix)
    finite = np.isfinite(small)
    if finite.any():
        vmin, vmax = ZScaleInterval().get_limits(small[finite])
        if not vmax > vmin:
            vmin, vmax = float(np.min(small[finite])), float(np.max(small[finite]))
        if not vmax > vmin:
            vmin, vmax = vmin - 0.5, vmin + 0.5
    else:
        vmin, vmax = 0.0, 1.0
    cmap = colormaps["gray"].with_extremes(bad="#600000")
    buf = io.BytesIO()
    mimage.imsave(
        buf,
        np.ma.masked_invalid(small),
        vmin=vmin,
        vmax=vmax,
        cmap=cmap,
        origin="lower",
        format="png",
        metadata=_PNG_METADATA,
    )
    return buf.getvalue()


def draw_contacts(ax, contacts: dict[str, float], t0: float, *, source: str = "") -> None:
    """Vertical lines at predicted transit times (BJD_TDB [d], drawn relative to ``t0``)."""
    styles = {"ingress": ("--", "ingress"), "mid": ("-", "mid-transit"), "egress": ("--", "egress")}
    for key in ("ingress", "mid", "egress"):
        if key in contacts:
            ls, label = styles[key]
            ax.axvline(
                contacts[key] - t0,
                color="tab:red",
                ls=ls,
                lw=1.0,
                alpha=0.7,
                label=f"predicted {label}" + (f" ({source})" if source and key == "mid" else ""),
            )


def lightcurve_png(lightcurve: TargetLightCurve, *, bin_minutes: float = 10.0, dpi: int = 100) -> bytes:
    """Light curve of one target: points and time bins per filter, ensemble flux below.

    Top panel: ``rel_flux`` with errors (epochs flagged LOW_TRANSPARENCY or
    NO_ENSEMBLE as grey crosses) and the inverse-variance weighted mean in
    ``bin_minutes`` bins. Below: the ensemble flux normalised to its median (a drop means
    clouds), or a note when the table has none; each comparison star over the others
    (``check_<source id>`` columns; the most scattered drawn in black); and the observing
    conditions (airmass, FWHM, sky) over their medians.

    Raises
    ------
    BadInputError
        When the light curve has no epoch with a finite time.
    """
    table = lightcurve.table
    time_col = lightcurve.time_column
    t_all = float_column(table, time_col)
    if not np.isfinite(t_all).any():
        raise BadInputError(f"light curve {lightcurve.name!r} has no epoch with a finite time")
    t0 = float(np.floor(np.nanmin(t_all)))
    rel = float_column(table, "rel_flux")
    rel_err = float_column(table, "rel_flux_err")
    flags = (
        np.nan_to_num(float_column(table, "flags"), nan=0.0).astype(np.int64)
        if "flags" in table.colnames
        else np.zeros(len(table), np.int64)
    )
    bad = (flags & _LC_BAD_BITS) != 0
    bands = _str_column(table, "filter")
    ens_col = lightcurve.ensemble_column
    ens = float_column(table, ens_col) if ens_col else np.full(len(table), np.nan)

    conditions = [
        c
        for c in ("airmass", "fwhm", "sky")
        if c in table.colnames and np.isfinite(float_column(table, c)).any()
    ]
    check_cols = [
        c for c in table.colnames if c.startswith("check_") and np.isfinite(float_column(table, c)).any()
    ]
    ratios = [3.0, 1.0] + ([1.2] if check_cols else []) + ([1.0] if conditions else [])
    fig = Figure(figsize=(9.0, 2.9 + 1.3 * len(ratios)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios}))
    ax, ax2 = axes[0], axes[1]
    axc = axes[2] if check_cols else None
    ax3 = axes[-1] if conditions else None
    for k, band in enumerate(sorted(set(bands))):
        sel = bands == band
        colour = _COLOURS[k % len(_COLOURS)]
        t = t_all[sel] - t0
        good = ~bad[sel] & np.isfinite(t) & np.isfinite(rel[sel])
        name = band or "all"
        if good.any():
            ax.errorbar(
                t[good],
                rel[sel][good],
                yerr=np.where(np.isfinite(rel_err[sel][good]), rel_err[sel][good], 0.0),
                fmt=".",
                color=colour,
                alpha=0.35,
                ms=4,
                lw=0.6,
                label=f"{name} points",
            )
            tb, yb, eb, _n = bin_lightcurve(
                t[good], rel[sel][good], rel_err[sel][good], bin_minutes=bin_minutes
            )
            tb, yb, eb = break_at_gaps(tb, yb, eb, bin_minutes=bin_minutes)
            if tb.size:
                ax.errorbar(
                    tb,
                    yb,
                    yerr=eb,
                    fmt="o-",
                    color=colour,
                    ms=4,
                    lw=1.2,
                    label=f"{name} {bin_minutes:g}-min bins",
                )
        flagged = bad[sel] & np.isfinite(t) & np.isfinite(rel[sel])
        if flagged.any():
            ax.plot(t[flagged], rel[sel][flagged], "x", color="0.4", ms=5, label=f"{name} flagged")
        e = ens[sel]
        if np.isfinite(e).any():
            ax2.plot(t, e / np.nanmedian(e), ".", color=colour, ms=4, label=f"{name} ensemble")
    if lightcurve.excluded_times:
        tx = np.asarray(lightcurve.excluded_times, float) - t0
        top = np.nanmax(rel[np.isfinite(rel)]) if np.isfinite(rel).any() else 1.0
        ax.plot(
            tx,
            np.full(tx.size, top),
            "x",
            color="0.55",
            ms=6,
            mew=1.2,
            label=f"excluded frames ({tx.size}; no flux used)",
        )
    if lightcurve.contacts and time_col == "bjd_tdb":
        draw_contacts(ax, lightcurve.contacts, t0, source=lightcurve.contacts_source)
    if not np.isfinite(ens).any():
        ax2.text(0.5, 0.5, "no ensemble flux", transform=ax2.transAxes, ha="center", va="center", color="0.5")
    if not np.isfinite(rel).any():
        ax.text(0.5, 0.5, "no relative flux", transform=ax.transAxes, ha="center", va="center", color="0.5")
    ax.set_ylabel("relative flux")
    ax.set_title(lightcurve.name)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    ax2.set_ylabel("comparison stars\n(ensemble) / median", fontsize=8)
    ax2.grid(alpha=0.3)
    bottom = ax2
    if axc is not None:
        # Each comparison star over the others: a variable or blended comparison stands out.
        scatter = {}
        for c in check_cols:
            v = float_column(table, c)
            ok = np.isfinite(v) & np.isfinite(t_all)
            scatter[c] = float(np.nanstd(v[ok])) if ok.sum() > 1 else np.nan
            axc.plot(t_all[ok] - t0, v[ok], "-", lw=0.6, alpha=0.6)
        worst = max(scatter, key=lambda c: np.nan_to_num(scatter[c], nan=-1.0))
        v = float_column(table, worst)
        ok = np.isfinite(v) & np.isfinite(t_all)
        axc.plot(
            t_all[ok] - t0,
            v[ok],
            ".-",
            color="black",
            lw=0.8,
            ms=3,
            label=f"most scattered: source {worst.removeprefix('check_')} (rms {scatter[worst]:.2%})",
        )
        axc.set_ylabel(f"each of {len(check_cols)} comparisons\n/ the others", fontsize=8)
        axc.legend(fontsize=7, loc="best")
        axc.grid(alpha=0.3)
        bottom = axc
    if ax3 is not None:
        # Observing conditions: each series over its median, so airmass, FWHM and sky share an axis.
        styles = {
            "airmass": ("tab:brown", "airmass"),
            "fwhm": ("tab:purple", "FWHM"),
            "sky": ("tab:gray", "sky"),
        }
        for c in conditions:
            v = float_column(table, c)
            med = np.nanmedian(v)
            if np.isfinite(med) and med != 0:
                colour, label = styles[c]
                ax3.plot(t_all - t0, v / med, ".", ms=3, color=colour, label=f"{label} (median {med:.3g})")
        ax3.set_ylabel("conditions / median", fontsize=8)
        ax3.legend(fontsize=7, loc="best")
        ax3.grid(alpha=0.3)
        bottom = ax3
    bottom.set_xlabel(f"{'BJD_TDB' if time_col == 'bjd_tdb' else 'MJD (UTC)'} - {t0:.0f} [d]")
    fig.tight_layout()
    return _figure_png(fig)


def efficiency_png(summary: AnalysisSummary, *, dpi: int = 100) -> bytes:
    """Fraction of injected events recovered against their expected S/N, with binomial errors,
    the finder's threshold and the 50 % point."""
    eff = summary.efficiency
    ok = summary.n_injected > 0
    fig = Figure(figsize=(6.5, 4.2), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if ok.any():
        n = summary.n_injected[ok].astype(float)
        err = np.sqrt(np.clip(eff[ok] * (1 - eff[ok]), 0.0, None) / n)
        ax.errorbar(summary.snr_centre[ok], eff[ok], yerr=err, fmt="o-", ms=4, label="recovered fraction")
    else:
        ax.text(0.5, 0.5, "no injections", transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.axvline(summary.snr_threshold, ls="--", color="0.4", label=f"threshold S/N {summary.snr_threshold:g}")
    if np.isfinite(summary.snr50):
        ax.axvline(summary.snr50, ls=":", color="tab:red", label=f"50 % at S/N {summary.snr50:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("expected S/N of the injected event")
    ax.set_ylabel("fraction recovered")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"injection-recovery, analysis {summary.provenance_id}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _figure_png(fig)
