"""Association, photometry and light-curve stages.

Wiring only: the registry says which solved images exist; :mod:`darkroom.timeseries`
associates and assembles light curves, :mod:`darkroom.phot` measures and calibrates.
Three stages, in order, after ``astrometry``:

``associate`` (one unit per field)
    The detections of every frame of a field (``Image.field``, i.e. OBJECT; frames
    whose astrometry failed are left out) become sources
    (:func:`~darkroom.timeseries.associate`). With an absolute WCS the detections are
    matched on the sky, with a radius of ``radius_rms_factor`` times the frames'
    astrometric rms (bounded); a field without one is associated in its reference
    frame's pixels (``to_reference``), per astrometric field and night. Sources seen
    in fewer than ``min_epochs`` frames are dropped (cosmic rays, noise); stars of the
    reference catalog down to ``reference_stars_mag_max`` become sources too, so that
    stars below the detection limit are measured (forced). A later run of the same field
    (new nights) starts from the sources already recorded: their ids stay (frames measured
    before are not measured again for the sources a later night adds).
    Registry: ``Source`` rows (``field`` = OBJECT, or ``OBJECT@image<ref id>`` for a
    reference pixel frame; mean ``ra_deg, dec_deg``; mean ``x_ref, y_ref`` in the
    reference frame; ``n_epochs`` = frames with a detection; ``mean_mag`` per filter,
    instrumental here and replaced by the measured mean in ``lightcurves``) and
    ``Image.photcal["association"]`` (provenance, coords, field, radius).
``photometry`` (one unit per image, parallel)
    Every source of the field that falls on the frame is measured
    (:func:`~darkroom.phot.aperture_photometry`): its position comes from the source's
    sky position through the frame's WCS (or its reference-frame position through the
    inverse ``to_reference``), shifted by the median offset of the detections that
    match; a source with a detection within ``recentre_radius_fwhm`` is measured at the
    detection, any other is *forced* (``PhotFlag.FORCED``, ``Measurement.forced``).
    With ``method: psf`` (crowded fields) a PSF fit at the same positions, held fixed
    (:func:`~darkroom.phot.psf_photometry`; the frame's Moffat fit from the extract stage,
    pixel-integrated, of unit total flux; the background a mesh with the sources masked),
    then gives ``flux``, ``flux_err``, ``flags`` and the magnitudes: total fluxes, no
    aperture correction; the aperture columns stay in the Parquet file.
    With a reference catalog the zero point and colour term are fitted
    (:func:`~darkroom.phot.calibrate_photometry`, aperture magnitudes aperture-corrected
    to the largest aperture first); without one the magnitudes stay instrumental
    (``-2.5 log10(flux / exptime_s)``). Products: ``catalogs/<provenance>/<image>.phot.parquet``
    (every aperture and column), ``Measurement`` rows (replaced per image, so a re-run
    never duplicates) and ``Image.photcal``: ``provenance_id``, ``method``, ``mag_system``
    ('calibrated' or 'instrumental'), ``zp``, ``zp_err``, ``colour_term``,
    ``colour_term_err``, ``colour_fitted``, ``n_matched``, ``n_used``, ``rms_mag``,
    ``mag_limit`` (5-sigma, ``limit_n_sigma``), ``apcorr_mag`` (added to the
    instrumental magnitudes: 0 with PSF fluxes), ``apcorr_err``, ``n_apcorr``, ``reason``,
    ``aperture_radii_pix``, ``ref_aperture``, ``fwhm_pix``, ``n_measured``,
    ``n_forced``, ``n_offset_stars``, ``path``; with PSF fluxes also ``psf_model``
    ('moffat', or psf.model without a Moffat fit), ``psf_beta``, ``psf_fwhm_pix``,
    ``psf_fit_shape_pix``, ``n_psf_blended`` (fitted in groups), ``aperture_apcorr_mag``
    (the aperture columns' correction), ``psf_minus_aperture_mag`` and
    ``n_psf_aperture`` (PSF minus largest-aperture magnitude of isolated bright stars, a
    check of the PSF normalisation; None with fewer than 3) and ``psf_noise_area_pix``
    (the fit's noise-equivalent area behind ``mag_limit``).
``lightcurves`` (one unit per field)
    Per frame, the transparency relative to a clear frame
    (:func:`~darkroom.pipeline.lightcurves.frame_transparency`) into
    ``Image.photcal["transparency"]`` (``value``: over the median frame, ``of_clear``: over
    the clear-sky level the flag compares with, ``low``); a frame of low transparency
    becomes ``Image.quality_flag`` 'poor' with "low transparency (0.42 of clear)" added to
    ``Image.quality["poor_reason"]`` (after any earlier reason), and what it replaced is
    kept in ``transparency["marked_poor"]`` (``previous_flag``, ``previous_reason``) for
    ``forget_products`` to restore; per source, the mean measured magnitude per filter into
    ``Source.mean_mag``; and for each target of ``darkroom.yaml`` in the field its light
    curve, ``lightcurves/<provenance>/<name>.ecsv`` and one PNG per filter and season
    ``<name>_<filter>_s<season>.png``.

Pixel convention: 0-based pixel centres (sep); shapes ``(ny, nx)``; fluxes in the SCI
unit (adu); times MJD UTC at mid-exposure.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from photutils.psf import ImagePSF
from scipy.ndimage import uniform_filter
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from darkroom.astrom import AffineTransform
from darkroom.catalogs import (
    FileCatalogSource,
    ReferenceCatalogSource,
    ShardCatalogSource,
    load_reference_catalog,
    read_table,
)
from darkroom.config import PhotometrySettings
from darkroom.detect import estimate_background
from darkroom.errors import BadInputError, SolveError
from darkroom.phot import (
    ApertureConfig,
    PhotFlag,
    aperture_photometry,
    calibrate_photometry,
    calibrate_with_unit,
    limiting_magnitude,
    match_catalogs,
    match_xy,
    pixel_to_sky,
    psf_photometry,
    ref_columns_for_filter,
    sky_to_pixel,
)
from darkroom.phot.flags import DEFAULT_BAD_FLAGS
from darkroom.phot.settings import MeasureSettings
from darkroom.pipeline._products import jsonable, raw_stem, short_hash
from darkroom.pipeline.astrometry import wcs_from_astrom
from darkroom.pipeline.lightcurves import (
    assemble_lightcurve,
    bright_source_ids,
    field_measurements,
    find_source,
    frame_table,
    frame_transparency,
    pool_source_ids,
    pool_window,
    safe_name,
)
from darkroom.pipeline.stage import Stage, Unit, quarantine_exposure
from darkroom.repo.bulk import replace_measurements_for_images
from darkroom.repo.models import Exposure, Image, Measurement, Source
from darkroom.repo.store import atomic_path
from darkroom.timeseries import AssociationConfig, associate, plot_lightcurve, reference_level
from darkroom.timeseries.settings import AssociateSettings, LightCurveSettings, TargetConfig

__all__ = [
    "AssociateSettings",
    "AssociateStage",
    "LightCurvesStage",
    "MeasureSettings",
    "PhotometrySettings",
    "PhotometryStage",
]

log = logging.getLogger(__name__)
_MAG_ERR_FACTOR = 2.5 / math.log(10.0)
#: measurements unfit to measure an aperture correction (or compare PSF and aperture fluxes)
_APCORR_BAD_FLAGS = DEFAULT_BAD_FLAGS | int(PhotFlag.BLENDED) | int(PhotFlag.CR) | int(PhotFlag.FORCED)


def _affine(d: dict[str, Any] | None) -> AffineTransform | None:
    if not d:
        return None
    return AffineTransform(np.asarray(d["matrix"], float), np.asarray(d["offset"], float))


def _resolve_catalog(root: Path, source):
    """A catalog source with a path relative to the repository made absolute."""
    if isinstance(source, FileCatalogSource) and not source.path.is_absolute():
        return source.model_copy(update={"path": root / source.path})
    if isinstance(source, ShardCatalogSource) and not source.folder.is_absolute():
        return source.model_copy(update={"folder": root / source.folder})
    return source


@lru_cache(maxsize=8)
def _catalog_cached(source_json: str, ra: float, dec: float, radius: float, epoch: float | None, cache: str):
    from pydantic import TypeAdapter

    source = TypeAdapter(ReferenceCatalogSource).validate_json(source_json)
    return load_reference_catalog(
        source, ra_deg=ra, dec_deg=dec, radius_deg=radius, epoch_jyear=epoch, cache_dir=cache
    )


def _load_reference(root: Path, source, *, ra: float, dec: float, radius: float, mjd: float | None) -> Table:
    """Reference stars in a cone (cached per worker; the cone is rounded so frames share it)."""
    source = _resolve_catalog(root, source)
    epoch = None if mjd is None else round(float(Time(mjd, format="mjd").jyear), 1)
    return _catalog_cached(
        source.model_dump_json(),
        round(ra, 2),
        round(dec, 2),
        round(radius + 0.02, 2),
        epoch,
        str(root / "catalogs" / "cache"),
    )


_BANDS = {"u", "g", "r", "i", "z", "y", "b", "v", "j", "h", "k", "ks", "bp", "rp", "rc", "ic"}


def _reference_columns(columns: list[str], cfg: MeasureSettings, filter_name: str | None):
    """(magnitude column, error column, how) of the reference catalogue for a frame's filter;
    the magnitude column is None (and ``how`` the reason) when none fits the filter."""
    from darkroom.phot.calibrate import _band_key

    mag, err, how = ref_columns_for_filter(filter_name, columns, mapping=cfg.ref_mag_columns)
    if mag is not None:
        if mag == cfg.ref_mag_column and cfg.ref_mag_err_column:
            err = cfg.ref_mag_err_column
        return mag, err, how
    legacy = cfg.ref_mag_column
    if cfg.ref_mag_columns and filter_name:
        return None, None, how  # the bands are mapped: an unmapped filter has no column
    if legacy in columns and (not filter_name or _band_key(legacy) not in _BANDS):
        return legacy, cfg.ref_mag_err_column, f"ref_mag_column {legacy!r}"
    return None, None, how


def _photometric_reference(table: Table, cfg: MeasureSettings, filter_name: str | None = None):
    """The columns calibrate_photometry reads (ra, dec, mag, mag_err, colour) and how the magnitude
    column was chosen; (None, reason) when the catalogue has no column for the frame's filter."""
    mag_col, err_col, how = _reference_columns(list(table.colnames), cfg, filter_name)
    if mag_col is None:
        return None, how
    for col in (err_col, *(cfg.ref_colour_columns or ())):
        if col is not None and col not in table.colnames:
            raise BadInputError(
                f"reference catalog has no column {col!r} (columns: {', '.join(table.colnames[:20])}); "
                "set photometry.measure.ref_mag_column / ref_colour_columns"
            )
    out = Table()
    out["ra"] = np.asarray(table["ra_deg"], float)
    out["dec"] = np.asarray(table["dec_deg"], float)
    out["mag"] = np.ma.filled(np.ma.asarray(table[mag_col], float), np.nan)
    if err_col:
        out["mag_err"] = np.ma.filled(np.ma.asarray(table[err_col], float), np.nan)
    if cfg.ref_colour_columns:
        a, b = cfg.ref_colour_columns
        out["colour"] = np.ma.filled(np.ma.asarray(table[a], float), np.nan) - np.ma.filled(
            np.ma.asarray(table[b], float), np.nan
        )
    return out, how


def _image_rows(session: Session, where) -> list[tuple[Image, dict]]:
    rows = session.execute(
        select(Image, Exposure.meta)
        .join(Exposure, Exposure.id == Image.exposure_id)
        .where(Exposure.state == "ok", where)
        .order_by(Image.mjd_mid, Image.id)
    ).all()
    return [(im, meta or {}) for im, meta in rows]


def _blend_flags_from(phot: Table, nb_x: np.ndarray, nb_y: np.ndarray, *, config: ApertureConfig) -> None:
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


def _moffat_psf_model(
    fwhm_pix: float, beta: float, *, half_size_pix: int, oversampling: int = 5, n_sub: int = 3
) -> ImagePSF:
    """A circular Moffat PSF of unit total flux, pixel-integrated, as a photutils ``ImagePSF``.

    ``I(r) = (beta - 1) / (pi alpha^2) (1 + r^2 / alpha^2) ** -beta`` with
    ``FWHM = 2 alpha sqrt(2 ** (1 / beta) - 1)`` [pixel]. ``data[j, i]`` is the fraction of
    the flux that falls in a pixel whose centre lies ``((i - c) / oversampling,
    (j - c) / oversampling)`` pixels from the star (``c`` the central element; photutils'
    ePSF convention): the mean of ``I`` over ``oversampling * n_sub`` (odd) samples per
    axis of that pixel. The stamp covers ``half_size_pix`` pixels each side; the light
    beyond it is not renormalised into the stamp, so a fitted flux is the total flux.
    """
    if not (fwhm_pix > 0 and beta > 1 and half_size_pix >= 2):
        raise BadInputError(
            f"Moffat PSF needs fwhm_pix > 0, beta > 1, half_size_pix >= 2 (got {fwhm_pix}, {beta}, {half_size_pix})"
        )
    n_cell = oversampling * n_sub
    if n_cell % 2 == 0:
        raise BadInputError(f"oversampling * n_sub must be odd, got {oversampling} * {n_sub}")
    alpha = fwhm_pix / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    n_half = half_size_pix * n_cell + n_cell // 2  # the stamp plus half a pixel each side
    u = np.arange(-n_half, n_half + 1) / n_cell
    profile = (
        (beta - 1.0) / (math.pi * alpha**2) * (1.0 + (u[None, :] ** 2 + u[:, None] ** 2) / alpha**2) ** -beta
    )
    pixel_mean = uniform_filter(profile, size=n_cell, mode="constant")  # = the pixel integral (area 1)
    take = n_half + np.arange(-half_size_pix * oversampling, half_size_pix * oversampling + 1) * n_sub
    return ImagePSF(pixel_mean[np.ix_(take, take)], oversampling=oversampling)


def _disc_mask(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, *, radius_pix: float) -> np.ndarray:
    """Boolean ``(ny, nx)`` plane, True within ``radius_pix`` of any 0-based position ``(x, y)``."""
    ny, nx = shape
    out = np.zeros(shape, bool)
    r = math.ceil(radius_pix)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = np.isfinite(x) & np.isfinite(y)
    xk, yk = x[keep], y[keep]
    cx, cy = np.rint(xk).astype(np.int64), np.rint(yk).astype(np.int64)
    for ox, oy in zip(dx.ravel(), dy.ravel(), strict=True):
        px, py = cx + ox, cy + oy
        inside = (
            (px >= 0) & (px < nx) & (py >= 0) & (py < ny) & ((px - xk) ** 2 + (py - yk) ** 2 <= radius_pix**2)
        )
        out[py[inside], px[inside]] = True
    return out


def _parquet_meta(path: Path) -> dict[str, Any]:
    """The astropy ``meta`` of a Parquet table (its schema only is read; read_table drops it)."""
    import pyarrow.parquet as pq
    from astropy.table.meta import get_header_from_yaml

    raw = (pq.read_schema(path).metadata or {}).get(b"table_meta_yaml")
    if not raw:
        return {}
    return dict(get_header_from_yaml(raw.decode("utf-8").splitlines()).get("meta") or {})


def _psf_noise_area(phot: Table, sky_rms: float) -> float | None:
    """Noise-equivalent area of the PSF fit [pixel^2]: ``(flux_err / sky_rms)^2`` of the sky-limited
    quarter of the measurements (smallest errors); None without a usable error."""
    err = np.asarray(phot["flux_err"], float)
    err = np.sort(err[np.isfinite(err) & (err > 0)])
    if not err.size or not sky_rms > 0:
        return None
    faint = err[: max(1, err.size // 4)]
    return float(np.median((faint / sky_rms) ** 2))


# --------------------------------------------------------------------------- associate


class AssociateStage(Stage):
    """Detections of a field's frames become sources (see the module docstring)."""

    name = "associate"
    reads = ("extract", "astrometry")
    settings = ("photometry.associate",)
    extra_inputs = ("reference_catalog", "ref_mag_column")

    def critical(self) -> dict[str, Any]:
        # The reference catalog and its magnitude column (for reference_stars_mag_max) enter
        # the provenance only when they are used.
        crit = super().critical()
        if self.config.reference_stars_mag_max is None or self.inputs.get("reference_catalog") is None:
            crit.pop("input:reference_catalog", None)
            crit.pop("input:ref_mag_column", None)
        return crit

    @property
    def reference(self) -> tuple[Any, str] | None:
        """(reference catalog, magnitude column) when reference stars become sources, else None."""
        if self.config.reference_stars_mag_max is None:
            return None
        return self.inputs.get("reference_catalog"), self.inputs.get("ref_mag_column", "mag")

    def _coords(self, items: list[tuple[Image, dict]]) -> str:
        mode = self.config.coords
        if mode != "auto":
            return mode
        with_wcs = sum(bool((im.astrom or {}).get("wcs")) for im, _ in items)
        return "sky" if with_wcs == len(items) else "pixel"

    def plan(self, session: Session) -> list[Unit]:
        items = [
            (im, meta)
            for im, meta in _image_rows(session, Image.astrom_flag.is_not(None))
            if (im.astrom or {}).get("provenance_id") in self.upstream
            and im.astrom_flag != "failed"
            and im.catalog_path
        ]
        by_field: dict[str, list[tuple[Image, dict]]] = defaultdict(list)
        for im, meta in items:
            by_field[im.field or ""].append((im, meta))
        units = []
        for field, members in sorted(by_field.items()):
            if self._coords(members) == "sky":
                groups = [(field, "sky", members)]
            else:
                by_ref: dict[int, list] = defaultdict(list)
                for im, meta in members:
                    by_ref[int(im.astrom.get("reference_image_id") or im.id)].append((im, meta))
                groups = [(f"{field}@image{ref}", "pixel", m) for ref, m in sorted(by_ref.items())]
            for source_field, coords, group in groups:
                todo = [
                    (im, meta)
                    for im, meta in group
                    if ((im.photcal or {}).get("association") or {}).get("provenance_id")
                    != self.provenance_id
                ]
                if not todo:
                    continue
                known = session.execute(
                    select(
                        Source.id, Source.ra_deg, Source.dec_deg, Source.x_ref, Source.y_ref, Source.n_epochs
                    )
                    .where(Source.provenance_id == self.provenance_id, Source.field == source_field)
                    .order_by(Source.id)
                ).all()
                cols = list(zip(*known, strict=True)) if known else [()] * 6
                units.append(
                    Unit(
                        key=f"field:{short_hash(source_field)}:{short_hash(','.join(str(im.id) for im, _ in todo))}",
                        payload={
                            "field": field,
                            "source_field": source_field,
                            "coords": coords,
                            "frames": [self._frame(im, meta) for im, meta in todo],
                            "known": {
                                "source_id": np.array(cols[0], np.int64),
                                "ra": np.array([np.nan if v is None else v for v in cols[1]], float),
                                "dec": np.array([np.nan if v is None else v for v in cols[2]], float),
                                "x": np.array([np.nan if v is None else v for v in cols[3]], float),
                                "y": np.array([np.nan if v is None else v for v in cols[4]], float),
                                "n_epochs": np.array(cols[5], np.int64),
                            },
                        },
                    )
                )
        return units

    @staticmethod
    def _frame(im: Image, meta: dict) -> dict[str, Any]:
        a = im.astrom or {}
        return {
            "image_id": im.id,
            "catalog_path": im.catalog_path,
            "mjd": im.mjd_mid,
            "filter": im.filter or "",
            "exptime_s": meta.get("exptime_s"),
            "wcs": a.get("wcs"),
            "to_reference": a.get("to_reference"),
            "rms_arcsec": a.get("rms_arcsec"),
            "rms_pix": a.get("rms_pix"),
            "naxis": (meta.get("naxis1"), meta.get("naxis2")),
        }

    def _radius(self, frames: list[dict], coords: str) -> float:
        cfg: AssociateSettings = self.config
        key = "rms_arcsec" if coords == "sky" else "rms_pix"
        rms = [f[key] for f in frames if f.get(key) is not None and np.isfinite(f[key])]
        r = cfg.radius_rms_factor * float(np.median(rms)) if rms else 0.0
        if coords == "sky":
            return float(np.clip(r, cfg.min_radius_arcsec, cfg.max_radius_arcsec))
        return float(np.clip(r, cfg.min_radius_pix, cfg.max_radius_pix))

    def _detections(self, frames: list[dict], coords: str) -> Table:
        cfg: AssociateSettings = self.config
        parts: dict[str, list] = defaultdict(list)
        for f in frames:
            cat = read_table(self.root / f["catalog_path"])
            if not len(cat):
                continue
            x = np.asarray(cat["x"], float)
            y = np.asarray(cat["y"], float)
            keep = np.isfinite(x) & np.isfinite(y)
            if "snr" in cat.colnames:
                keep &= np.nan_to_num(np.asarray(cat["snr"], float), nan=0.0) >= cfg.min_snr
            if cfg.exclude_sharp and "sharp" in cat.colnames:
                keep &= ~np.asarray(cat["sharp"], bool)
            x, y = x[keep], y[keep]
            flux = np.asarray(cat["flux_aper_adu"], float)[keep] if "flux_aper_adu" in cat.colnames else None
            t = _affine(f["to_reference"]) or AffineTransform.identity()
            xr, yr = t.apply(x, y)
            if coords == "sky":
                wcs = wcs_from_astrom({"wcs": f["wcs"]})
                ra, dec = pixel_to_sky(wcs, x, y)
                parts["ra"].append(ra)
                parts["dec"].append(dec)
            parts["x"].append(xr)
            parts["y"].append(yr)
            parts["image_id"].append(np.full(x.size, f["image_id"], np.int64))
            parts["mjd_utc"].append(np.full(x.size, np.nan if f["mjd"] is None else f["mjd"]))
            parts["filter"].append(np.full(x.size, f["filter"], dtype=object))
            exptime = f.get("exptime_s") or 1.0
            if flux is None:
                mag = np.full(x.size, np.nan)
            else:
                with np.errstate(all="ignore"):
                    mag = np.where(flux > 0, -2.5 * np.log10(np.where(flux > 0, flux, 1.0) / exptime), np.nan)
            parts["mag"].append(mag)
        if not parts:
            return Table()
        out = Table({k: np.concatenate(v) for k, v in parts.items()})
        out["filter"] = np.asarray(out["filter"]).astype(str)
        return out

    def run(self, unit: Unit) -> dict[str, Any]:
        cfg: AssociateSettings = self.config
        p = unit.payload
        coords = p["coords"]
        frames = p["frames"]
        radius = self._radius(frames, coords)
        det = self._detections(frames, coords)
        known = p["known"]
        n_known = int(known["source_id"].size)
        if not len(det) and not n_known:
            raise SolveError(
                f"field {p['source_field']!r}: no detections to associate in {len(frames)} frames"
            )
        assoc_cfg = AssociationConfig(
            coords="sky" if coords == "sky" else "pixel",
            radius_arcsec=radius if coords == "sky" else 1.0,
            radius_pix=radius if coords == "pixel" else 2.0,
            mag_col="mag",
            mag_err_col=None,
            filter_col="filter",
        )
        seed = None
        if n_known:
            seed = Table({"source_id": known["source_id"]})
            if coords == "sky":
                seed["ra"], seed["dec"] = known["ra"], known["dec"]
            else:
                seed["x"], seed["y"] = known["x"], known["y"]
        if len(det):
            res = associate(det, config=assoc_cfg, sources=seed)
            sid = res.source_id
            summary = res.sources
        else:
            sid = np.zeros(0, np.int64)
            summary = Table({"source_id": np.zeros(0, np.int64), "n_epochs": np.zeros(0, np.int64)})
        # mean reference-frame position of every source (also in sky mode)
        uniq, inv = np.unique(sid, return_inverse=True)
        cnt = np.bincount(inv, minlength=uniq.size) if sid.size else np.zeros(0)
        xr = np.bincount(inv, weights=np.asarray(det["x"], float), minlength=uniq.size) / np.maximum(cnt, 1)
        yr = np.bincount(inv, weights=np.asarray(det["y"], float), minlength=uniq.size) / np.maximum(cnt, 1)
        ref_xy = {int(s): (float(a), float(b)) for s, a, b in zip(uniq, xr, yr, strict=True)}
        bands = [c[4:] for c in summary.colnames if c.startswith("mag_") and not c.startswith("mag_err_")]
        min_n = max(cfg.min_epochs, math.ceil(cfg.min_epoch_fraction * len(frames)))
        if not n_known:
            # a new field seen in fewer frames (a standard star, a single visit) keeps what
            # every one of its frames shows
            min_n = min(min_n, len(frames))
        known_ids = set(known["source_id"].tolist())
        new, updated = [], []
        for row in summary:
            s = int(row["source_id"])
            n = int(row["n_epochs"])
            if n == 0:
                continue
            mags = {}
            for band in bands:
                v = row[f"mag_{band}"]
                if np.isfinite(v):
                    mags[band if band != "all" else ""] = float(v)
            item = {
                "source_id": s,
                "ra": float(row["ra"]) if coords == "sky" else None,
                "dec": float(row["dec"]) if coords == "sky" else None,
                "x_ref": ref_xy.get(s, (None, None))[0],
                "y_ref": ref_xy.get(s, (None, None))[1],
                "n_epochs": n,
                "mean_mag": mags,
            }
            if s in known_ids:
                updated.append(item)
            elif n >= min_n:
                new.append(item)
        if coords == "sky" and cfg.reference_stars_mag_max is not None and self.reference is not None:
            new.extend(self._reference_sources(frames, summary, known, radius))
        log.info(
            "field %s: %d detections in %d frames -> %d new sources, %d known updated (radius %.2f %s)",
            p["source_field"],
            len(det),
            len(frames),
            len(new),
            len(updated),
            radius,
            "arcsec" if coords == "sky" else "pix",
        )
        return {
            "new": new,
            "updated": updated,
            "image_ids": [f["image_id"] for f in frames],
            "radius": radius,
            "n_detections": len(det),
        }

    def _reference_sources(
        self, frames: list[dict], summary: Table, known: dict, radius: float
    ) -> list[dict]:
        """Reference stars on the field's frames with no source yet (never detected)."""
        source, ref_mag_column = self.reference  # type: ignore[misc]
        if source is None:
            return []
        cfg: AssociateSettings = self.config
        ref_frame = frames[0]
        wcs = wcs_from_astrom({"wcs": ref_frame["wcs"]})
        nx, ny = (int(v) if v else 0 for v in ref_frame["naxis"])
        if not nx or not ny:
            return []
        cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
        ra0, dec0 = pixel_to_sky(wcs, np.array([cx]), np.array([cy]))
        scale = np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0
        half_diag = 0.5 * math.hypot(nx, ny) * scale / 3600.0
        cat = _load_reference(
            self.root,
            source,
            ra=float(ra0[0]),
            dec=float(dec0[0]),
            radius=1.2 * half_diag,
            mjd=ref_frame["mjd"],
        )
        if not len(cat) or ref_mag_column not in cat.colnames:
            return []
        mag = np.ma.filled(np.ma.asarray(cat[ref_mag_column], float), np.nan)
        keep = np.isfinite(mag) & (mag <= cfg.reference_stars_mag_max)
        cat, mag = cat[keep], mag[keep]
        ra = np.asarray(cat["ra_deg"], float)
        dec = np.asarray(cat["dec_deg"], float)
        # on at least one frame
        on = np.zeros(ra.size, bool)
        for f in frames:
            fw = wcs_from_astrom({"wcs": f["wcs"]})
            fx, fy = sky_to_pixel(fw, ra, dec)
            fnx, fny = (int(v) if v else nx for v in f["naxis"])
            on |= (fx >= 0) & (fx <= fnx - 1) & (fy >= 0) & (fy <= fny - 1)
        have_ra = [np.asarray(summary["ra"], float)] if "ra" in summary.colnames and len(summary) else []
        have_dec = [np.asarray(summary["dec"], float)] if "dec" in summary.colnames and len(summary) else []
        if known["source_id"].size:
            have_ra.append(known["ra"])
            have_dec.append(known["dec"])
        taken = np.zeros(ra.size, bool)
        if have_ra:
            hr, hd = np.concatenate(have_ra), np.concatenate(have_dec)
            ok = np.isfinite(hr) & np.isfinite(hd)
            i_ref, _, _ = match_catalogs(ra, dec, hr[ok], hd[ok], radius_arcsec=max(radius, 1.0))
            taken[i_ref] = True
        sel = np.flatnonzero(on & ~taken)
        xr, yr = sky_to_pixel(wcs, ra[sel], dec[sel])
        t = _affine(ref_frame["to_reference"]) or AffineTransform.identity()
        xr, yr = t.apply(xr, yr)
        return [
            {
                "source_id": -1,
                "ra": float(ra[i]),
                "dec": float(dec[i]),
                "x_ref": float(x),
                "y_ref": float(y),
                "n_epochs": 0,
                "mean_mag": {},
            }
            for i, x, y in zip(sel, xr, yr, strict=True)
        ]

    def record(self, session: Session, unit: Unit, result: dict[str, Any]) -> None:
        p = unit.payload
        field = p["source_field"]
        rows = [
            Source(
                provenance_id=self.provenance_id,
                field=field,
                ra_deg=item["ra"],
                dec_deg=item["dec"],
                x_ref=item["x_ref"],
                y_ref=item["y_ref"],
                n_epochs=item["n_epochs"],
                mean_mag=item["mean_mag"],
            )
            for item in result["new"]
        ]
        session.add_all(rows)
        for item in result["updated"]:
            src = session.get(Source, item["source_id"])
            n_old = src.n_epochs or 0
            n_all = n_old + item["n_epochs"]
            if item["ra"] is not None and src.ra_deg is not None and n_old:
                # mean unit vector of the old and new detections
                from darkroom.phot.match import radec_to_unit, unit_to_radec

                v = radec_to_unit([src.ra_deg], [src.dec_deg])[0] * n_old
                v = v + radec_to_unit([item["ra"]], [item["dec"]])[0] * item["n_epochs"]
                ra, dec = unit_to_radec(v[None, :])
                src.ra_deg, src.dec_deg = float(ra[0]), float(dec[0])
            mags = dict(src.mean_mag or {})
            for band, value in item["mean_mag"].items():
                old = mags.get(band)
                mags[band] = (
                    value if old is None or not n_old else (old * n_old + value * item["n_epochs"]) / n_all
                )
            src.mean_mag = mags
            src.n_epochs = n_all
        assoc = {
            "provenance_id": self.provenance_id,
            "coords": p["coords"],
            "field": field,
            "radius": result["radius"],
            "radius_unit": "arcsec" if p["coords"] == "sky" else "pix",
        }
        for image in session.scalars(select(Image).where(Image.id.in_(result["image_ids"]))):
            photcal = dict(image.photcal or {})
            photcal["association"] = assoc
            image.photcal = photcal

    def forget_products(self, session: Session) -> None:
        """Delete this provenance's sources (and any measurement of them) and the association marks."""
        ids = select(Source.id).where(Source.provenance_id == self.provenance_id)
        session.execute(delete(Measurement).where(Measurement.source_id.in_(ids)))
        session.execute(delete(Source).where(Source.provenance_id == self.provenance_id))
        for image in session.scalars(select(Image)):
            photcal = dict(image.photcal or {})
            if (photcal.get("association") or {}).get("provenance_id") == self.provenance_id:
                photcal.pop("association", None)
                image.photcal = photcal


# --------------------------------------------------------------------------- photometry


class PhotometryStage(Stage):
    """Aperture (or PSF) photometry of every source of the field on each image, zero point, measurements."""

    name = "photometry"
    reads = ("extract", "astrometry", "associate")
    settings = ("photometry.measure",)
    extra_inputs = ("reference_catalog",)

    def __init__(self, root: Path, config: MeasureSettings, **kwargs: Any) -> None:
        inputs = kwargs.get("inputs") or {}
        if config.reference_catalog is None and inputs.get("reference_catalog") is not None:
            # the repository's one reference catalog (the astrometry's when photometry names none)
            config = config.model_copy(update={"reference_catalog": inputs["reference_catalog"]})
        super().__init__(root, config, **kwargs)

    def plan(self, session: Session) -> list[Unit]:
        items = [
            (im, meta)
            for im, meta in _image_rows(session, Image.astrom_flag.is_not(None))
            if ((im.photcal or {}).get("association") or {}).get("provenance_id") in self.upstream
            and (im.photcal or {}).get("provenance_id") != self.provenance_id
        ]
        by_field: dict[tuple[str, str], list] = defaultdict(list)
        for im, meta in items:
            a = im.photcal["association"]
            by_field[(a["field"], a["provenance_id"])].append((im, meta))
        units = []
        for (field, assoc_prov), members in sorted(by_field.items()):
            rows = session.execute(
                select(Source.id, Source.ra_deg, Source.dec_deg, Source.x_ref, Source.y_ref)
                .where(Source.field == field, Source.provenance_id == assoc_prov)
                .order_by(Source.id)
            ).all()
            cols = list(zip(*rows, strict=True)) if rows else [()] * 5
            sources = {
                "source_id": np.array(cols[0], np.int64),
                "ra": np.array([np.nan if v is None else v for v in cols[1]], float),
                "dec": np.array([np.nan if v is None else v for v in cols[2]], float),
                "x_ref": np.array([np.nan if v is None else v for v in cols[3]], float),
                "y_ref": np.array([np.nan if v is None else v for v in cols[4]], float),
            }
            for im, meta in members:
                calib = (im.quality or {}).get("calib") or {}
                units.append(
                    Unit(
                        key=f"img:{im.id}",
                        payload={
                            "image_id": im.id,
                            "path": im.path,
                            "catalog_path": im.catalog_path,
                            "coords": im.photcal["association"]["coords"],
                            "wcs": (im.astrom or {}).get("wcs"),
                            "to_reference": (im.astrom or {}).get("to_reference"),
                            "fwhm_pix": (im.quality or {}).get("fwhm_pix"),
                            "exptime_s": meta.get("exptime_s"),
                            "gain_e_per_adu": calib.get("gain_e_per_adu"),
                            "unit_zero_point_mag": calib.get("unit_zero_point_mag"),
                            "mjd": im.mjd_mid,
                            "filter": im.filter or "",
                            "sources": sources,
                            "exposure_id": im.exposure_id,
                        },
                    )
                )
        return units

    def _positions(self, p: dict[str, Any], shape: tuple[int, int]):
        """Predicted 0-based positions of the field's sources on this frame, and which are on it."""
        s = p["sources"]
        wcs = wcs_from_astrom({"wcs": p["wcs"]}) if p.get("wcs") else None
        if p["coords"] == "sky":
            if wcs is None:
                raise SolveError("the frame has no WCS but its field was associated on the sky")
            ok = np.isfinite(s["ra"]) & np.isfinite(s["dec"])
            x = np.full(s["ra"].size, np.nan)
            y = np.full(s["ra"].size, np.nan)
            if ok.any():
                x[ok], y[ok] = sky_to_pixel(wcs, s["ra"][ok], s["dec"][ok])
        else:
            t = _affine(p.get("to_reference"))
            if t is None:
                raise SolveError("the frame has no transform to its field's reference frame")
            x, y = t.inverse().apply(s["x_ref"], s["y_ref"])
        ny, nx = shape
        on = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)
        return x, y, on, wcs

    def run(self, unit: Unit) -> dict[str, Any]:
        cfg: MeasureSettings = self.config
        p = unit.payload
        path = self.root / p["path"]
        try:
            with fits.open(path, memmap=False) as hdul:
                sci = np.asarray(hdul["SCI"].data, dtype=np.float32)
                mask = np.asarray(hdul["MASK"].data) if "MASK" in hdul else None
                var = np.asarray(hdul["VAR"].data, dtype=np.float32) if "VAR" in hdul else None
        except (OSError, KeyError) as exc:
            raise BadInputError(f"cannot read calibrated image {Path(p['path']).name}: {exc}") from exc
        fwhm = p.get("fwhm_pix")
        if not (fwhm and np.isfinite(fwhm) and fwhm > 0):
            fwhm = cfg.default_fwhm_pix
        x, y, on, wcs = self._positions(p, sci.shape)
        idx = np.flatnonzero(on)
        x, y = x[idx], y[idx]
        source_id = p["sources"]["source_id"][idx]
        det = read_table(self.root / p["catalog_path"]) if p.get("catalog_path") else Table()
        det_x = np.asarray(det["x"], float) if len(det) else np.zeros(0)
        det_y = np.asarray(det["y"], float) if len(det) else np.zeros(0)
        good_det = np.isfinite(det_x) & np.isfinite(det_y)
        if len(det) and "sharp" in det.colnames:
            good_det &= ~np.asarray(det["sharp"], bool)
        forced = np.ones(x.size, bool)
        n_shift = 0
        if idx.size and good_det.any():
            radius = cfg.recentre_radius_fwhm * fwhm
            gi = np.flatnonzero(good_det)
            i_src, i_det, _ = match_xy(x, y, det_x[gi], det_y[gi], radius_pix=radius)
            if i_src.size >= 3:
                # the prediction's systematic offset (WCS or transform error) moves forced positions too
                dx = float(np.median(det_x[gi][i_det] - x[i_src]))
                dy = float(np.median(det_y[gi][i_det] - y[i_src]))
                x, y = x + dx, y + dy
                n_shift = i_src.size
                i_src, i_det, _ = match_xy(x, y, det_x[gi], det_y[gi], radius_pix=radius)
            if cfg.do_recentre and i_src.size:
                x[i_src] = det_x[gi][i_det]
                y[i_src] = det_y[gi][i_det]
            forced[i_src] = False
        inside = (x >= -0.5) & (x <= sci.shape[1] - 0.5) & (y >= -0.5) & (y <= sci.shape[0] - 0.5)
        x, y, forced, source_id = x[inside], y[inside], forced[inside], source_id[inside]
        # annulus masking: every detection and every source position (light of undetected stars
        # skews a noisy annulus median upwards in a crowded field); BLENDED: detections only
        finite = np.isfinite(det_x) & np.isfinite(det_y)
        nb_x = np.concatenate([det_x[finite], x[forced]])
        nb_y = np.concatenate([det_y[finite], y[forced]])
        phot = aperture_photometry(
            sci,
            mask,
            var,
            x,
            y,
            fwhm_pix=float(fwhm),
            config=cfg.aperture,
            forced=forced,
            neighbour_x=nb_x,
            neighbour_y=nb_y,
            exptime_s=p.get("exptime_s"),
        )
        _blend_flags_from(phot, det_x[finite], det_y[finite], config=cfg.aperture)
        phot["source_id"] = source_id
        phot["image_id"] = np.full(len(phot), p["image_id"], np.int64)
        if wcs is not None:
            phot["ra"], phot["dec"] = pixel_to_sky(wcs, x, y) if len(phot) else (np.zeros(0), np.zeros(0))
        else:
            phot["ra"] = phot["dec"] = np.full(len(phot), np.nan)
        psf_info: dict[str, Any] = {}
        if cfg.method == "psf" and len(phot):
            psf_info = self._psf_fluxes(
                phot,
                sci,
                mask,
                var,
                fwhm_pix=float(fwhm),
                exptime_s=p.get("exptime_s"),
                catalog_meta=_parquet_meta(self.root / p["catalog_path"]) if p.get("catalog_path") else {},
            )
        photcal = self._calibrate(phot, p, wcs, sci.shape)
        photcal["method"] = cfg.method
        photcal.update(psf_info)
        out = self.product_path("catalogs", self.provenance_id, f"{raw_stem(p['path'])}.phot.parquet")
        phot.meta["photcal"] = jsonable(photcal)
        phot.meta["image_id"] = p["image_id"]
        with atomic_path(out) as tmp:
            phot.write(tmp, format="parquet")
        photcal["path"] = self.relative(out)
        photcal["n_measured"] = len(phot)
        photcal["n_forced"] = int(np.count_nonzero(phot["forced"]))
        photcal["n_offset_stars"] = n_shift
        return {
            "image_id": p["image_id"],
            "columns": {
                "source_id": np.asarray(phot["source_id"], np.int64),
                "image_id": np.asarray(phot["image_id"], np.int64),
                "x": np.asarray(phot["x"], float),
                "y": np.asarray(phot["y"], float),
                "ra_deg": np.asarray(phot["ra"], float),
                "dec_deg": np.asarray(phot["dec"], float),
                "flux": np.asarray(phot["flux"], float),
                "flux_err": np.asarray(phot["flux_err"], float),
                "mag": np.asarray(phot["mag"], float),
                "mag_err": np.asarray(phot["mag_err"], float),
                "flags": np.asarray(phot["flags"], np.int64),
                "forced": np.asarray(phot["forced"], bool),
                "mjd_mid": np.full(len(phot), np.nan if p.get("mjd") is None else p["mjd"]),
            },
            "photcal": jsonable(photcal),
        }

    def _psf_fluxes(
        self,
        phot: Table,
        sci: np.ndarray,
        mask: np.ndarray | None,
        var: np.ndarray | None,
        *,
        fwhm_pix: float,
        exptime_s: float | None,
        catalog_meta: dict[str, Any],
    ) -> dict[str, Any]:
        """PSF fit at the aperture positions (held fixed) replaces the measurement columns (in place).

        ``flux, flux_err`` [adu] (total PSF flux), ``snr``, ``mag_inst, mag_inst_err`` and
        ``flags`` come from :func:`~darkroom.phot.psf_photometry`; FORCED keeps its meaning here
        (no detection matched), BLENDED means a star fitted together with others. The aperture
        columns (``flux_ap{k}``, ``flux_err_ap{k}``, ``flags_ap{k}``, ``bkg``) stay, the reference
        aperture's magnitude as ``mag_inst_ap``; the fit adds ``psf_flags`` (photutils' bits),
        ``qfit``, ``cfit``, ``group_id``, ``group_size``. Returns the photcal entries of the fit.
        """
        cfg: MeasureSettings = self.config
        model = None
        info: dict[str, Any] = {"psf_model": cfg.psf.model}
        moffat_fwhm = float(catalog_meta.get("psf_fwhm_pix") or np.nan)
        beta = float(catalog_meta.get("psf_beta") or np.nan)
        if cfg.psf_moffat and np.isfinite(moffat_fwhm) and np.isfinite(beta) and moffat_fwhm > 0 and beta > 1:
            fwhm_pix = moffat_fwhm
            model = _moffat_psf_model(fwhm_pix, beta, half_size_pix=math.ceil(4.0 * fwhm_pix) + 1)
            info = {"psf_model": "moffat", "psf_beta": beta}
        elif cfg.psf_moffat:
            log.warning("no Moffat fit in the frame's catalog: PSF model %r instead", cfg.psf.model)
        x = np.asarray(phot["x"], float)
        y = np.asarray(phot["y"], float)
        background = None
        if cfg.psf_background_mask_fwhm > 0:
            bad = _disc_mask(sci.shape, x, y, radius_pix=cfg.psf_background_mask_fwhm * fwhm_pix)
            if mask is not None:
                bad |= (np.asarray(mask).astype(np.int64) & cfg.psf.exclude_bits) != 0
            if not bad.all():
                background = estimate_background(sci, mask=bad).level_adu
        fit = psf_photometry(
            sci,
            mask,
            var,
            x,
            y,
            fwhm_pix=fwhm_pix,
            config=cfg.psf,
            background=background,
            forced=True,
            psf_model=model,
            exptime_s=exptime_s,
        )
        forced_bit = int(PhotFlag.FORCED)
        flags = np.asarray(fit["flags"], np.int64) & ~forced_bit
        flags |= np.where(np.asarray(phot["forced"], bool), forced_bit, 0)
        phot["mag_inst_ap"] = phot["mag_inst"]
        for col in ("flux", "flux_err", "snr", "mag_inst", "mag_inst_err"):
            phot[col] = np.asarray(fit[col], float)
        phot["flags"] = flags.astype(np.int32)
        for col in ("psf_flags", "qfit", "cfit", "group_id", "group_size"):
            phot[col] = fit[col]
        info["psf_fwhm_pix"] = fwhm_pix
        info["psf_fit_shape_pix"] = int(fit.meta["fit_shape_pix"])
        info["n_psf_blended"] = int(np.count_nonzero(np.asarray(fit["group_size"]) > 1))
        phot.meta.update(info)
        return info

    def _bright_clean(self, phot: Table) -> np.ndarray:
        """Stars that measure aperture corrections: detected, unblended and unflagged in the reference
        and the largest aperture, S/N >= ``apcorr_min_snr`` in the reference aperture."""
        cfg: MeasureSettings = self.config
        radii = phot.meta["aperture_radii_pix"]
        ref = int(phot.meta["ref_aperture"])
        big = int(np.argmax(radii))
        f_ref = np.asarray(phot[f"flux_ap{ref}"], float)
        f_big = np.asarray(phot[f"flux_ap{big}"], float)
        flags = np.asarray(phot[f"flags_ap{big}"], np.int64) | np.asarray(phot[f"flags_ap{ref}"], np.int64)
        with np.errstate(all="ignore"):
            snr = f_ref / np.asarray(phot[f"flux_err_ap{ref}"], float)
            return (
                ((flags & _APCORR_BAD_FLAGS) == 0) & (snr >= cfg.apcorr_min_snr) & (f_ref > 0) & (f_big > 0)
            )

    def _psf_minus_aperture(self, phot: Table) -> tuple[float | None, int]:
        """Median PSF minus largest-aperture magnitude of bright isolated stars [mag]: a check of the
        PSF model's normalisation (~0 when both measure the total flux).

        Isolated: the PSF fluxes of all other measured sources (detected or forced) within the
        largest radius plus one FWHM add up to less than 1 % of the star's; a PSF group of one;
        clean flags in both apertures and the fit.
        """
        if not len(phot):
            return None, 0
        from scipy.spatial import cKDTree

        radii = phot.meta["aperture_radii_pix"]
        big = int(np.argmax(radii))
        reach = float(radii[big]) + float(phot.meta.get("fwhm_pix") or 1.0)
        xy = np.column_stack([np.asarray(phot["x"], float), np.asarray(phot["y"], float)])
        flux = np.nan_to_num(np.asarray(phot["flux"], float), nan=0.0).clip(0.0)
        near = cKDTree(xy).query_ball_point(xy, r=reach)
        light = np.array([flux[v].sum() for v in near]) - flux
        use = self._bright_clean(phot) & ((np.asarray(phot["flags"], np.int64) & _APCORR_BAD_FLAGS) == 0)
        use &= (np.asarray(phot["group_size"]) == 1) & (light < 0.01 * flux)
        with np.errstate(all="ignore"):
            d = -2.5 * np.log10(
                np.asarray(phot["flux"], float)[use] / np.asarray(phot[f"flux_ap{big}"], float)[use]
            )
        d = d[np.isfinite(d)]
        if d.size < 3:
            return None, int(d.size)
        return float(np.median(d)), int(d.size)

    def _aperture_correction(self, phot: Table) -> tuple[float, float | None, int]:
        """Median magnitude difference from the reference to the largest aperture, bright clean stars."""
        radii = phot.meta["aperture_radii_pix"]
        ref = int(phot.meta["ref_aperture"])
        big = int(np.argmax(radii))
        if big == ref or not len(phot):
            return 0.0, None, 0
        f_ref = np.asarray(phot[f"flux_ap{ref}"], float)
        f_big = np.asarray(phot[f"flux_ap{big}"], float)
        use = self._bright_clean(phot)
        # only stars with no other detection inside their large aperture and sky annulus: in a
        # crowded field (a globular cluster) the neighbours' light makes every magnitude too bright
        # (SDSS M2, r: 0.05 mag with all bright stars, 0.027 with a flux-sum isolation, 0.007 so)
        from scipy.spatial import cKDTree

        annulus = phot.meta.get("annulus_pix") or [0.0, 0.0]
        reach = float(radii[big]) + max(float(annulus[-1]), float(radii[big]))
        xy = np.column_stack([np.asarray(phot["x"], float), np.asarray(phot["y"], float)])
        if len(xy) > 1:
            dist, _ = cKDTree(xy).query(xy, k=2)
            alone = use & (dist[:, 1] > reach)
            if alone.sum() >= 5:
                use = alone
        with np.errstate(all="ignore"):
            d = -2.5 * np.log10(f_big[use] / f_ref[use])
        if d.size < 3:
            return 0.0, None, int(d.size)
        centre = float(np.median(d))
        spread = 1.4826 * float(np.median(np.abs(d - centre)))
        keep = np.abs(d - centre) <= max(3.0 * spread, 1e-3)
        centre = float(np.median(d[keep]))
        err = 1.2533 * float(np.std(d[keep])) / math.sqrt(keep.sum())
        return centre, err, int(keep.sum())

    def _calibrate(self, phot: Table, p: dict[str, Any], wcs, shape: tuple[int, int]) -> dict[str, Any]:
        """Zero point (with a catalog) or instrumental magnitudes; adds mag, mag_err to ``phot``."""
        cfg: MeasureSettings = self.config
        psf = cfg.method == "psf"
        apcorr, apcorr_err, n_apcorr = (0.0, None, 0)
        if cfg.do_aperture_correction:
            apcorr, apcorr_err, n_apcorr = self._aperture_correction(phot)
        extra: dict[str, Any] = {}
        if psf:
            # PSF fluxes are total: the aperture correction describes the aperture columns only
            extra["aperture_apcorr_mag"] = apcorr
            extra["psf_minus_aperture_mag"], extra["n_psf_aperture"] = self._psf_minus_aperture(phot)
            apcorr = 0.0
        else:
            phot["mag_inst_ap"] = phot["mag_inst"]
            phot["mag_inst"] = np.asarray(phot["mag_inst"], float) + apcorr
        reference = None
        reason = ""
        zp_source = ""
        source = self.config.reference_catalog
        if source is not None and wcs is not None and len(phot):
            ny, nx = shape
            ra0, dec0 = pixel_to_sky(wcs, np.array([(nx - 1) / 2.0]), np.array([(ny - 1) / 2.0]))
            scale = math.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0
            radius = 0.55 * math.hypot(nx, ny) * scale / 3600.0
            cat = _load_reference(
                self.root, source, ra=float(ra0[0]), dec=float(dec0[0]), radius=radius, mjd=p.get("mjd")
            )
            if len(cat):
                reference, zp_source = _photometric_reference(cat, cfg, p.get("filter") or None)
                if reference is None:
                    reason = zp_source
        elif source is not None and p.get("unit_zero_point_mag") is None:
            reason = "no WCS: the reference catalog cannot be matched"
        if p.get("unit_zero_point_mag") is not None:
            # an already-calibrated image (e.g. SDSS nanomaggies): the zero point is its own unit's
            result, calibrated = calibrate_with_unit(
                phot, float(p["unit_zero_point_mag"]), exptime_s=p.get("exptime_s")
            )
            zp_source, reason = "image unit", ""
        else:
            zp_cfg = cfg.zero_point.model_copy(
                update={
                    "ra_col": "ra",
                    "dec_col": "dec",
                    "ref_ra_col": "ra",
                    "ref_dec_col": "dec",
                    "ref_mag_col": "mag",
                    "ref_mag_err_col": "mag_err"
                    if reference is not None and "mag_err" in reference.colnames
                    else None,
                    "ref_colour_col": "colour" if cfg.ref_colour_columns else None,
                }
            )
            result, calibrated = calibrate_photometry(
                phot, reference, config=zp_cfg, n_sigma_limit=cfg.limit_n_sigma
            )
        zp_flag = None
        if result.zp is not None and result.rms is not None and result.rms > cfg.max_zp_rms_mag:
            zp_flag = (
                f"implausible zero-point scatter: rms {result.rms:.3f} mag > {cfg.max_zp_rms_mag:g} "
                f"({zp_source}; wrong band or catalogue?)"
            )
            log.warning("image %s: %s", p.get("image_id"), zp_flag)
        for col in ("mag", "mag_err", "ref_index", "colour", "zp_used"):
            phot[col] = calibrated[col]
        mag_limit = result.mag_limit
        radii = phot.meta["aperture_radii_pix"]
        ref_ap = int(phot.meta["ref_aperture"])
        if len(phot) and np.isfinite(np.asarray(phot["bkg_rms"], float)).any():
            sky_rms = float(np.nanmedian(np.asarray(phot["bkg_rms"], float)))
            radius_pix = float(radii[ref_ap])
            n_bkg: float | None = float(np.median(np.asarray(phot["n_bkg_pix"], float)))
            if psf:
                # a PSF fit's sky noise is that of an aperture of the PSF's noise-equivalent area
                noise_area = _psf_noise_area(phot, sky_rms)
                extra["psf_noise_area_pix"] = noise_area
                radius_pix = math.sqrt(noise_area / math.pi) if noise_area else radius_pix
                n_bkg = None
            zp_for_limit = result.zp if result.zp is not None else 0.0
            mag_limit = limiting_magnitude(
                zp=zp_for_limit + apcorr,
                sky_rms=sky_rms,
                radius_pix=radius_pix,
                n_sigma=cfg.limit_n_sigma,
                n_bkg_pix=n_bkg,
                exptime_s=p.get("exptime_s"),
                gain_e_per_adu=p.get("gain_e_per_adu"),
            )
        return {
            "provenance_id": self.provenance_id,
            "mag_system": "calibrated" if result.zp is not None else "instrumental",
            "zp": result.zp,
            "zp_err": result.zp_err,
            "colour_term": result.colour_term if result.zp is not None else None,
            "colour_term_err": result.colour_term_err,
            "colour_fitted": result.colour_fitted,
            "n_matched": result.n_matched,
            "n_used": result.n_used,
            "rms_mag": result.rms,
            "mag_limit": mag_limit,
            "limit_n_sigma": cfg.limit_n_sigma,
            "apcorr_mag": apcorr,
            "apcorr_err": apcorr_err,
            "n_apcorr": n_apcorr,
            "reason": reason or result.reason,
            "zp_source": zp_source if result.zp is not None else None,
            "zp_flag": zp_flag,
            "aperture_radii_pix": [float(r) for r in radii],
            "ref_aperture": ref_ap,
            "fwhm_pix": phot.meta.get("fwhm_pix"),
            **extra,
        }

    def quarantine(self, session: Session, unit: Unit, reason: str) -> None:
        quarantine_exposure(session, unit.payload.get("exposure_id"), f"{self.name}: {reason}")

    def record(self, session: Session, unit: Unit, result: dict[str, Any]) -> None:
        image_id = result["image_id"]
        replace_measurements_for_images(
            session, [image_id], result["columns"], provenance_id=self.provenance_id
        )
        image = session.get(Image, image_id)
        photcal = {k: v for k, v in (image.photcal or {}).items() if k in ("association",)}
        photcal.update(result["photcal"])
        image.photcal = photcal

    def forget_products(self, session: Session) -> None:
        """Delete this provenance's measurements and photometric calibrations (files stay)."""
        session.execute(delete(Measurement).where(Measurement.provenance_id == self.provenance_id))
        for image in session.scalars(select(Image)):
            photcal = dict(image.photcal or {})
            if photcal.get("provenance_id") == self.provenance_id:
                image.photcal = {k: v for k, v in photcal.items() if k == "association"}


# --------------------------------------------------------------------------- light curves


class LightCurvesStage(Stage):
    """Frame transparency, mean magnitudes and the targets' light curves, per field."""

    name = "lightcurves"
    reads = ("quality", "associate", "photometry")
    settings = ("photometry.lightcurves",)
    extra_inputs = ("targets",)

    @property
    def targets(self) -> tuple[TargetConfig, ...]:
        return tuple(self.inputs.get("targets") or ())

    def critical(self) -> dict[str, Any]:
        crit = super().critical()
        if not self.targets:
            crit.pop("input:targets", None)
        return crit

    def plan(self, session: Session) -> list[Unit]:
        cfg: LightCurveSettings = self.config
        by_field: dict[tuple[str, str], list[Image]] = defaultdict(list)
        for im in session.scalars(
            select(Image).where(Image.astrom_flag.is_not(None)).order_by(Image.mjd_mid)
        ):
            pc = im.photcal or {}
            if pc.get("provenance_id") in self.upstream:
                a = pc.get("association") or {}
                by_field[(a.get("field") or "", a.get("provenance_id") or "")].append(im)
        units = []
        for (field, assoc_prov), images in sorted(by_field.items()):
            if all(
                ((im.photcal or {}).get("transparency") or {}).get("provenance_id") == self.provenance_id
                for im in images
            ):
                continue
            phot_prov = images[0].photcal["provenance_id"]
            image_ids = [im.id for im in images]
            frames, location = frame_table(session, image_ids)
            # 'poor' as the quality stage left it: this stage's own marks are redone below
            before = {im.id: _flag_before_mark(im) for im in images}
            frames["poor"] = [before[int(i)] == "poor" for i in frames["image_id"]]
            # the brightest sources of the field for the frame transparency
            pool = set(
                bright_source_ids(
                    session, field=field, provenance_id=assoc_prov, n=3 * cfg.n_transparency_stars
                )
            )
            targets = []
            window = pool_window(cfg)
            for t in self.targets:
                src = find_source(
                    session,
                    ra_deg=t.ra_deg,
                    dec_deg=t.dec_deg,
                    radius_arcsec=cfg.match_radius_arcsec,
                    provenance_id=assoc_prov,
                )
                if src is None or src.field != field:
                    log.debug("target %s: no source of field %r within the match radius", t.name, field)
                    continue
                members = pool_source_ids(session, src, mag_window=window)
                pool.update(members)
                pool.update(t.comparison_ids or ())
                targets.append({"target": t.model_dump(mode="json"), "source_id": src.id})
            meas = field_measurements(
                session, source_ids=sorted(pool), provenance_id=phot_prov, image_ids=image_ids
            )
            units.append(
                Unit(
                    key=f"field:{short_hash(field + assoc_prov)}:{short_hash(','.join(map(str, image_ids)))}",
                    payload={
                        "field": field,
                        "association": assoc_prov,
                        "photometry": phot_prov,
                        "frames": frames,
                        "location": location,
                        "measurements": meas,
                        "targets": targets,
                    },
                )
            )
        return units

    def run(self, unit: Unit) -> dict[str, Any]:
        cfg: LightCurveSettings = self.config
        p = unit.payload
        frames: Table = p["frames"]
        value, low = frame_transparency(
            p["measurements"],
            frames,
            n_stars=cfg.n_transparency_stars,
            config=cfg.frame_transparency,
            bad_flags=cfg.lightcurve.comparison.bad_flags,
        )
        # the same per filter over the clear-sky level that the flags compare with
        of_clear = np.full(len(value), np.nan)
        bands = np.asarray(frames["filter"]).astype(str)
        for band in np.unique(bands):
            sel = bands == band
            level = reference_level(
                value[sel],
                percentile=cfg.frame_transparency.reference_percentile,
                window_epochs=cfg.frame_transparency.window_epochs,
            )
            with np.errstate(all="ignore"):
                of_clear[sel] = value[sel] / level
        products = []
        for item in p["targets"]:
            t = TargetConfig.model_validate(item["target"])
            try:
                lc = assemble_lightcurve(
                    p["measurements"],
                    frames,
                    target_id=item["source_id"],
                    ra_deg=t.ra_deg,
                    dec_deg=t.dec_deg,
                    location=p["location"],
                    settings=cfg,
                    differential=cfg.lightcurve.differential,
                    comparison_ids=t.comparison_ids,
                )
            except (BadInputError, SolveError) as exc:
                log.warning("target %s: no light curve: %s", t.name, exc.reason)
                products.append({"target": t.name, "source_id": item["source_id"], "error": exc.reason})
                continue
            lc.meta.update({"target_name": t.name, "source_id": item["source_id"], "field": p["field"]})
            stem = safe_name(t.name)
            path = self.product_path("lightcurves", self.provenance_id, f"{stem}.ecsv")
            with atomic_path(path) as tmp:
                lc.write(tmp, format="ascii.ecsv")
            plots = []
            for band in np.unique(np.asarray(lc["filter"]).astype(str)):
                for season in np.unique(np.asarray(lc["season"])):
                    part = lc[
                        (np.asarray(lc["filter"]).astype(str) == band) & (np.asarray(lc["season"]) == season)
                    ]
                    if not len(part):
                        continue
                    png = self.product_path(
                        "lightcurves",
                        self.provenance_id,
                        f"{stem}_{safe_name(band or 'none')}_s{int(season)}.png",
                    )
                    with atomic_path(png) as tmp:
                        plot_lightcurve(
                            part,
                            tmp,
                            bin_minutes=cfg.bin_minutes,
                            title=f"{t.name} ({band}, season {season})",
                        )
                    plots.append(self.relative(png))
            products.append(
                {
                    "target": t.name,
                    "source_id": item["source_id"],
                    "path": self.relative(path),
                    "plots": plots,
                    "n_points": len(lc),
                }
            )
        return {
            "image_ids": [int(i) for i in frames["image_id"]],
            "transparency": [None if not np.isfinite(v) else float(v) for v in value],
            "of_clear": [None if not np.isfinite(v) else float(v) for v in of_clear],
            "low": [bool(b) for b in low],
            "products": products,
        }

    def record(self, session: Session, unit: Unit, result: dict[str, Any]) -> None:
        p = unit.payload
        for image_id, value, of_clear, low in zip(
            result["image_ids"], result["transparency"], result["of_clear"], result["low"], strict=True
        ):
            image = session.get(Image, image_id)
            # an earlier mark (a previous run of this field) is undone first, so that the
            # state kept for forget_products is always the one before any transparency mark
            _unmark_poor(image)
            entry: dict[str, Any] = {
                "provenance_id": self.provenance_id,
                "value": value,
                "of_clear": of_clear,
                "low": low,
            }
            if low:
                entry["marked_poor"] = _mark_poor(image, of_clear)
            photcal = dict(image.photcal or {})
            photcal["transparency"] = entry
            image.photcal = photcal
        n_low = sum(result["low"])
        if n_low:
            log.info("field %s: %d of %d frames of low transparency", p["field"], n_low, len(result["low"]))
        self._update_mean_mags(session, p)
        for product in result["products"]:
            if "error" in product:
                log.warning("light curve of %s not written: %s", product["target"], product["error"])

    def _update_mean_mags(self, session: Session, p: dict[str, Any]) -> None:
        """Source.mean_mag per filter: weighted mean of the unflagged measurements (SQL aggregate)."""
        m, i = Measurement, Image
        w = 1.0 / (m.mag_err * m.mag_err)
        bad = DEFAULT_BAD_FLAGS | int(PhotFlag.CR)
        stmt = (
            select(m.source_id, i.filter, func.sum(m.mag * w) / func.sum(w))
            .join(i, i.id == m.image_id)
            .join(Source, Source.id == m.source_id)
            .where(
                m.provenance_id == p["photometry"],
                Source.field == p["field"],
                Source.provenance_id == p["association"],
                m.mag.is_not(None),
                m.mag_err > 0,
                m.flags.op("&")(bad) == 0,
            )
            .group_by(m.source_id, i.filter)
        )
        means: dict[int, dict[str, float]] = defaultdict(dict)
        for sid, band, mean in session.execute(stmt).all():
            if mean is not None:
                means[int(sid)][band or ""] = float(mean)
        for src in session.scalars(select(Source).where(Source.id.in_(list(means)))):
            src.mean_mag = means[src.id]

    def forget_products(self, session: Session) -> None:
        """Drop the transparency marks of this provenance and restore the quality flags and reasons
        they changed (light-curve files stay)."""
        for image in session.scalars(select(Image)):
            photcal = dict(image.photcal or {})
            if (photcal.get("transparency") or {}).get("provenance_id") == self.provenance_id:
                _unmark_poor(image)
                photcal = dict(image.photcal or {})
                photcal.pop("transparency", None)
                image.photcal = photcal


def _transparency_reason(of_clear: float | None) -> str:
    return "low transparency" if of_clear is None else f"low transparency ({of_clear:.2f} of clear)"


def _mark_poor(image: Image, of_clear: float | None) -> dict[str, Any]:
    """Make a low-transparency frame 'poor', its reason appended to any earlier one (in place).

    Returns what :func:`_unmark_poor` needs to restore the frame exactly: the previous
    ``quality_flag``, the previous ``quality["poor_reason"]`` (``previous_reason`` absent
    when the key was absent) and the reason written.
    """
    quality = dict(image.quality or {})
    undo: dict[str, Any] = {"previous_flag": image.quality_flag}
    if "poor_reason" in quality:
        undo["previous_reason"] = quality["poor_reason"]
    before = quality.get("poor_reason")
    reason = _transparency_reason(of_clear)
    quality["poor_reason"] = f"{before}; {reason}" if before else reason
    undo["poor_reason"] = quality["poor_reason"]
    image.quality = quality
    image.quality_flag = "poor"
    return undo


def _still_marked(image: Image, undo: dict[str, Any] | None) -> bool:
    """The frame still carries the flag and reason that :func:`_mark_poor` wrote."""
    return bool(undo) and (
        image.quality_flag == "poor" and (image.quality or {}).get("poor_reason") == undo.get("poor_reason")
    )


def _flag_before_mark(image: Image) -> str | None:
    """The frame's quality flag without its low-transparency mark (the current flag if unmarked)."""
    undo = ((image.photcal or {}).get("transparency") or {}).get("marked_poor")
    return undo.get("previous_flag") if _still_marked(image, undo) else image.quality_flag


def _unmark_poor(image: Image) -> None:
    """Undo :func:`_mark_poor` as recorded in ``photcal["transparency"]["marked_poor"]`` (in place).

    Only when the frame still carries that mark: a flag or reason rewritten since (a
    re-run of the quality stage) is left alone. The record itself is dropped.
    """
    photcal = dict(image.photcal or {})
    entry = dict(photcal.get("transparency") or {})
    undo = entry.pop("marked_poor", None)
    if not undo:
        return
    if _still_marked(image, undo):
        quality = dict(image.quality or {})
        if "previous_reason" in undo:
            quality["poor_reason"] = undo["previous_reason"]
        else:
            quality.pop("poor_reason", None)
        image.quality = quality
        image.quality_flag = undo.get("previous_flag")
    else:
        log.debug("image %s: quality flag changed since the transparency mark; left as it is", image.id)
    photcal["transparency"] = entry
    image.photcal = photcal
