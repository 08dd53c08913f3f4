"""Image-quality figures of a frame, limits that flag poor frames, per-night summaries and plots.

A *figures table* has one row per frame and the columns named like the fields of
:class:`ImageQuality` (``fwhm_pix``, ``fwhm_arcsec``, ``ellipticity``, ``sky_adu``,
``sky_rms_adu``, ``n_sources``, ``n_saturated``) plus a time column (astropy
``Time``, ISO strings, datetimes or MJD floats, UTC).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from astropy.time import Time
from pydantic import BaseModel, ConfigDict, Field

from darkroom.detect.background import Background
from darkroom.detect.settings import QualityConfig, QualityLimits
from darkroom.errors import BadInputError

__all__ = [
    "ImageQuality",
    "QualityConfig",
    "QualityLimits",
    "flag_poor_frames",
    "measure_image_quality",
    "plot_quality",
    "select_stars",
    "summarize_nights",
]

log = logging.getLogger(__name__)


class ImageQuality(BaseModel):
    """Image-quality figures of one frame."""

    model_config = ConfigDict(frozen=True)

    fwhm_pix: float | None = Field(
        description="FWHM of stars [pixels]: the frame's Moffat PSF fit (catalog meta 'psf_fwhm_pix') when "
        "there is one, else the median catalog fwhm_pix of the stars; None without stars"
    )
    fwhm_arcsec: float | None = Field(description="median FWHM of stars [arcsec]; None without a pixel scale")
    ellipticity: float | None = Field(
        description="median 1 - b/a of stars; None without stars or when they are undersampled"
    )
    sky_adu: float = Field(description="median background level [adu]")
    sky_rms_adu: float = Field(description="median background noise, 1 sigma [adu]")
    n_sources: int = Field(ge=0, description="number of detected sources")
    n_saturated: int = Field(ge=0, description="number of saturated sources")
    n_stars: int = Field(ge=0, description="number of stars the FWHM and ellipticity come from")


def select_stars(
    catalog: Table, *, shape: tuple[int, int], config: QualityConfig | None = None
) -> np.ndarray:
    """Boolean index of the catalog rows that are isolated, unsaturated, bright point sources.

    ``shape`` is the image's ``(ny, nx)``.
    """
    config = config or QualityConfig()
    ny, nx = shape
    m = config.edge_margin_pix
    x = np.asarray(catalog["x"], dtype=float)
    y = np.asarray(catalog["y"], dtype=float)
    fwhm = np.asarray(catalog["fwhm_pix"], dtype=float)
    snr = np.asarray(catalog["snr"], dtype=float)
    return (
        (np.asarray(catalog["flag"]) == 0)
        & ~np.asarray(catalog["saturated"], dtype=bool)
        & (snr >= config.min_snr)
        & np.isfinite(fwhm)
        & (fwhm >= config.min_fwhm_pix)
        & (np.asarray(catalog["nn_dist_pix"], dtype=float) >= config.isolation_fwhm * fwhm)
        & (x >= m)
        & (x <= nx - 1 - m)
        & (y >= m)
        & (y <= ny - 1 - m)
    )


def measure_image_quality(
    catalog: Table,
    background: Background,
    *,
    pixel_scale_arcsec: float | None = None,
    config: QualityConfig | None = None,
) -> ImageQuality:
    """FWHM, ellipticity, sky and counts of a frame from its source catalog.

    The FWHM is the catalog's PSF fit (``meta['psf_fwhm_pix']``, Moffat fits to the
    brightest isolated stars, see :func:`darkroom.detect.psf.measure_psf`) when it has
    one, else the sigma-clipped median ``fwhm_pix`` of the stars chosen by
    :func:`select_stars`.

    Parameters
    ----------
    catalog
        Output of :func:`darkroom.detect.detect_sources`.
    background
        The background the catalog was measured on (gives the sky level and noise).
    pixel_scale_arcsec
        Pixel scale [arcsec/pixel]; when given, ``fwhm_arcsec`` is filled in.
    config
        Star selection.
    """
    config = config or QualityConfig()
    if pixel_scale_arcsec is not None and not pixel_scale_arcsec > 0:
        raise BadInputError(f"pixel_scale_arcsec must be positive, got {pixel_scale_arcsec}")
    stars = (
        select_stars(catalog, shape=background.shape, config=config) if len(catalog) else np.zeros(0, bool)
    )
    n_stars = int(stars.sum())
    fwhm = ell = None
    if n_stars:
        fwhm_values = np.asarray(catalog["fwhm_pix"], dtype=float)[stars]
        fwhm = float(sigma_clipped_stats(fwhm_values, sigma=config.clip_sigma)[1])
    psf_fwhm = float(catalog.meta.get("psf_fwhm_pix", np.nan) or np.nan)
    if np.isfinite(psf_fwhm) and psf_fwhm > 0:
        fwhm = psf_fwhm
    if n_stars and fwhm is not None and fwhm >= config.min_fwhm_for_shape_pix:
        ell_values = np.asarray(catalog["ellipticity"], dtype=float)[stars]
        ell_values = ell_values[np.isfinite(ell_values)]
        if len(ell_values):
            ell = float(sigma_clipped_stats(ell_values, sigma=config.clip_sigma)[1])
    return ImageQuality(
        fwhm_pix=fwhm,
        fwhm_arcsec=None if fwhm is None or pixel_scale_arcsec is None else fwhm * pixel_scale_arcsec,
        ellipticity=ell,
        sky_adu=background.global_level_adu,
        sky_rms_adu=background.global_rms_adu,
        n_sources=len(catalog),
        n_saturated=int(np.count_nonzero(catalog["saturated"])) if len(catalog) else 0,
        n_stars=n_stars,
    )


def _column(table: Table, name: str) -> np.ndarray | None:
    if name not in table.colnames:
        return None
    col = table[name]
    values = np.ma.filled(np.ma.asarray(col, dtype=float), np.nan)
    return np.asarray(values, dtype=float)


def flag_poor_frames(figures: Table, *, limits: QualityLimits | None = None) -> Table:
    """Copy of the figures table with ``poor`` (bool) and ``poor_reason`` (str) columns.

    A missing figure (None/NaN, e.g. no stars for the FWHM, or no ellipticity of
    undersampled stars) does not make a frame poor: a frame without stars fails
    ``min_n_sources``. Limits on a column that the table lacks are skipped.
    """
    limits = limits or QualityLimits()
    out = figures.copy()
    n = len(out)
    reasons: list[list[str]] = [[] for _ in range(n)]

    def check(name: str, limit: float | None, upper: bool, unit: str) -> None:
        values = _column(out, name)
        if limit is None or values is None:
            return
        for i, v in enumerate(values):
            if np.isfinite(v) and ((v > limit) if upper else (v < limit)):
                op = ">" if upper else "<"
                reasons[i].append(f"{name} {v:.3g}{unit} {op} {limit:g}{unit}")

    check("fwhm_arcsec", limits.max_fwhm_arcsec, True, " arcsec")
    check("fwhm_pix", limits.max_fwhm_pix, True, " pix")
    check("ellipticity", limits.max_ellipticity, True, "")
    check("n_sources", limits.min_n_sources, False, "")
    check("sky_adu", limits.max_sky_adu, True, " adu")
    fwhm = _column(out, "fwhm_pix")
    if limits.max_fwhm_ratio is not None and fwhm is not None and np.isfinite(fwhm).any():
        median = float(np.nanmedian(fwhm))
        for i, v in enumerate(fwhm):
            if np.isfinite(v) and v > limits.max_fwhm_ratio * median:
                reasons[i].append(f"fwhm_pix {v:.3g} > {limits.max_fwhm_ratio:g} x median {median:.3g}")
    out["poor"] = np.array([bool(r) for r in reasons], dtype=bool)
    out["poor"].description = "frame fails at least one quality limit"
    out["poor_reason"] = np.array(["; ".join(r) for r in reasons], dtype=str) if n else np.zeros(0, dtype=str)
    out["poor_reason"].description = "the limits the frame fails, '; '-separated"
    return out


def _as_time(values: object) -> Time:
    if isinstance(values, Time):
        return values
    arr = np.asarray(values)
    if arr.dtype.kind in "fiu":
        return Time(arr.astype(float), format="mjd", scale="utc")
    return Time(list(arr), scale="utc")


def _nights(figures: Table, night_column: str, time_column: str) -> np.ndarray:
    if night_column in figures.colnames:
        return np.asarray(figures[night_column]).astype(str)
    if time_column not in figures.colnames:
        raise BadInputError(f"figures table needs a {night_column!r} or a {time_column!r} column")
    times = _as_time(figures[time_column])
    shifted = Time(times.mjd - 0.5, format="mjd", scale="utc")  # the night began on the date of t - 12 h
    return np.array([s[:10] for s in shifted.iso])


def summarize_nights(figures: Table, *, night_column: str = "night", time_column: str = "time") -> Table:
    """One row per night: frame counts and median figures.

    The night is ``figures[night_column]`` when present, else the UTC date of
    ``time - 12 h``. Columns: night, n_frames, n_poor (when the table has ``poor``),
    time_first, time_last (ISO UTC, when a time column exists) and the median of each
    figure column present (``fwhm_pix_median``, ...).
    """
    nights = _nights(figures, night_column, time_column)
    has_time = time_column in figures.colnames
    times = _as_time(figures[time_column]) if has_time and len(figures) else None
    figure_names = [
        c
        for c in (
            "fwhm_pix",
            "fwhm_arcsec",
            "ellipticity",
            "sky_adu",
            "sky_rms_adu",
            "n_sources",
            "n_saturated",
        )
        if c in figures.colnames
    ]
    rows: dict[str, list] = {"night": [], "n_frames": []}
    if "poor" in figures.colnames:
        rows["n_poor"] = []
    if has_time:
        rows["time_first"] = []
        rows["time_last"] = []
    for name in figure_names:
        rows[f"{name}_median"] = []
    for night in sorted(set(nights.tolist())):
        sel = nights == night
        rows["night"].append(night)
        rows["n_frames"].append(int(sel.sum()))
        if "n_poor" in rows:
            rows["n_poor"].append(int(np.count_nonzero(np.asarray(figures["poor"])[sel])))
        if times is not None:
            t = times[sel]
            rows["time_first"].append(t.min().isot)
            rows["time_last"].append(t.max().isot)
        for name in figure_names:
            values = _column(figures, name)[sel]
            rows[f"{name}_median"].append(
                float(np.nanmedian(values)) if np.isfinite(values).any() else np.nan
            )
    table = Table(rows)
    for name in figure_names:
        unit = figures[name].unit
        if unit is not None:
            table[f"{name}_median"].unit = unit
        table[f"{name}_median"].description = f"median {name} of the night's frames"
    return table


def plot_quality(
    figures: Table, path: str | Path, *, time_column: str = "time", title: str | None = None
) -> Path:
    """PNG of FWHM, sky level and source count against time; poor frames in red.

    FWHM is plotted in arcsec when ``fwhm_arcsec`` has values, else in pixels. Frames
    are flagged poor by a ``poor`` column when present. Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if time_column not in figures.colnames:
        raise BadInputError(f"figures table has no {time_column!r} column to plot against")
    path = Path(path)
    times = _as_time(figures[time_column])
    hours = (times.mjd - np.floor(times.mjd.min())) * 24.0 if len(figures) else np.zeros(0)
    poor = (
        np.asarray(figures["poor"], dtype=bool)
        if "poor" in figures.colnames
        else np.zeros(len(figures), bool)
    )
    fwhm_arcsec = _column(figures, "fwhm_arcsec")
    if fwhm_arcsec is not None and np.isfinite(fwhm_arcsec).any():
        fwhm, fwhm_label = fwhm_arcsec, "FWHM [arcsec]"
    else:
        fwhm, fwhm_label = _column(figures, "fwhm_pix"), "FWHM [pixels]"
    panels = [
        (fwhm, fwhm_label),
        (_column(figures, "sky_adu"), "sky [adu]"),
        (_column(figures, "n_sources"), "sources"),
    ]
    fig = Figure(figsize=(8, 7), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True)
    for ax, (values, label) in zip(axes, panels, strict=True):
        if values is None:
            ax.text(0.5, 0.5, f"no {label}", transform=ax.transAxes, ha="center")
        else:
            ax.plot(hours[~poor], values[~poor], "o", ms=3, color="tab:blue", label="ok")
            if poor.any():
                ax.plot(hours[poor], values[poor], "o", ms=4, color="tab:red", label="poor")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if poor.any():
        axes[0].legend(loc="best", fontsize="small")
    start = Time(np.floor(times.mjd.min()), format="mjd").iso[:10] if len(figures) else ""
    axes[-1].set_xlabel(f"hours since {start} 00:00 UTC")
    fig.suptitle(title or "image quality")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    log.debug("wrote quality plot %s", path)
    return path
