"""The astrometry stage: the frames of each field and night solved against the reference catalogue.

Wiring only: :mod:`darkroom.astrom` solves, :mod:`darkroom.catalogs` reads the reference catalog.

``astrometry`` (one unit per field and night)
    The frames of one field (``Image.field``, i.e. OBJECT), night, camera shape and
    binning, split where the pointing moves by more than ``split_field_fraction`` of
    the frame: a reference frame is solved absolutely (header WCS check and
    refinement, or an asterism match around the pointing hint against the reference
    catalog), every other frame is aligned to it
    (:func:`~darkroom.astrom.solve_frame_series`) and gets the reference WCS carried
    over (refined against the catalog when there is one). A frame that does not align
    is solved on its own when it can; otherwise it gets the flag 'failed' with
    the reason, and the field goes on. Without any absolute WCS the frames still get
    consistent ``to_reference`` transforms (pixels of the reference frame).

An ``astrom_solution`` row holds the method, WCS cards, matches, rms and flag; its ``values``: ``provenance_id``, ``method``, ``quality``, ``n_matched``,
``rms_arcsec``, ``rms_pix``, ``reason``, ``sip_order``, ``wcs`` (the WCS cards, 1-based
CRPIX as in FITS, or None), ``wcs_path`` (a header-only FITS file
``catalogs/<provenance>/<image>.wcs``), ``to_reference`` (``matrix`` 2x2 and
``offset`` [pixels]: 0-based pixels of this frame -> 0-based pixels of the reference
frame), ``reference_image_id``, ``field_key``, ``n_frames``, ``catalog`` (name and
number of stars used), ``centre_ra_deg``, ``centre_dec_deg`` and ``pixel_scale_arcsec``.
Its ``flag`` is good / marginal / failed; a frame without an absolute WCS is
at best 'marginal'.

An image row has one slot per product, so it describes the last run; the products of
earlier provenances stay on disk beside the new ones under their own folders.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from darkroom.astrom import (
    AffineTransform,
    FrameSources,
    PointingHint,
    SolveResult,
    fit_affine,
    pixel_scale_arcsec,
    solve_frame,
    solve_frame_series,
    source_positions,
)
from darkroom.astrom.blind import blind_solve
from darkroom.astrom.pointing import cluster_pointings
from darkroom.astrom.settings import SolveSettings
from darkroom.catalogs import (
    FileCatalogSource,
    ShardCatalogSource,
    angular_separation_deg,
    load_reference_catalog,
    read_table,
    resolve_catalog_source,
)
from darkroom.config import AstrometrySettings
from darkroom.errors import BadInputError, SolveError
from darkroom.io.fitsheader import rewrite_header
from darkroom.pipeline._products import jsonable, raw_stem, short_hash
from darkroom.pipeline.products import ImageProducts, extracted_images
from darkroom.pipeline.stage import Stage, Unit
from darkroom.repo.models import AstromSolution, Image
from darkroom.repo.store import atomic_path

__all__ = ["AstrometrySettings", "AstrometryStage", "SolveSettings", "header_wcs", "wcs_from_astrom"]

log = logging.getLogger(__name__)


_WCS_KEY = re.compile(
    r"^(WCSAXES|CTYPE\d|CRVAL\d|CRPIX\d|CDELT\d|CUNIT\d|CROTA\d|CD\d_\d|PC\d_\d|PV\d_\d+|LONPOLE|LATPOLE|"
    r"RADESYSA?|EQUINOX|A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_DMAX|B_DMAX|[AB]P?_\d+_\d+)$"
)


_GIVEN_WCS = "GIVENWCS"


def _scaled_by_fwhm(cfg: SolveSettings, fwhms: list[float | None]) -> SolveSettings:
    """Match radii and rms limits of the solver no tighter than the field's seeing allows: a
    centroid is good to ~0.1-0.2 FWHM, so a 5-pixel DSLR star is not held to a 1-pixel rms."""
    values = [float(f) for f in fwhms if f]
    if not values:
        return cfg
    fwhm = float(np.median(values))
    solve = cfg.series.solve
    scaled = solve.model_copy(
        update={
            "good_rms_pix": max(solve.good_rms_pix, 0.2 * fwhm),
            "marginal_rms_pix": max(solve.marginal_rms_pix, 0.4 * fwhm),
            "match_radius_pix": max(solve.match_radius_pix, 1.5 * fwhm),
            "min_match_radius_pix": max(solve.min_match_radius_pix, 0.4 * fwhm),
        }
    )
    if scaled == solve:
        return cfg
    return cfg.model_copy(update={"series": cfg.series.model_copy(update={"solve": scaled})})


def _widening(cfg: SolveSettings, frames: list[FrameSources]):
    """The near-blind search ladder: the configured pointing uncertainty, then 5x and 25x it
    (at least 0.5 and 2 deg), then, for a local catalogue file or shards, 10 deg around the
    pointing. Only frames with a pointing and no header WCS need more than the first step."""
    yield cfg
    if cfg.reference_catalog is None or not any(f.wcs is None and f.hint is not None for f in frames):
        return
    base = cfg.pointing_uncertainty_deg
    steps = [max(0.5, 5 * base), max(2.0, 25 * base)]
    if isinstance(cfg.reference_catalog, FileCatalogSource | ShardCatalogSource):
        steps.append(10.0)
    solve = cfg.series.solve
    for unc in sorted({u for u in steps if u > base}):
        wide = solve.model_copy(update={"search_radius_deg": min(30.0, max(solve.search_radius_deg, unc))})
        yield cfg.model_copy(
            update={
                "pointing_uncertainty_deg": min(30.0, unc),
                "series": cfg.series.model_copy(update={"solve": wide}),
            }
        )


def header_wcs(header: fits.Header) -> WCS | None:
    """The celestial WCS of a header, or None when it has none or it is unusable."""
    if "CTYPE1" not in header and "CTYPE2" not in header:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)  # RADECSYS, CDELT beside CD, ...
            wcs = WCS(header, naxis=2)
    except Exception as exc:  # astropy raises many types for broken WCS cards
        log.info("header WCS ignored: %s", exc)
        return None
    if not wcs.has_celestial:
        return None
    scale = pixel_scale_arcsec(wcs)
    return wcs.celestial if np.isfinite(scale) and scale > 0 else None


def wcs_from_astrom(astrom: dict[str, Any]) -> WCS | None:
    """The astropy WCS recorded in an astrometric solution (``astrom_solution.values``) (None when the frame has none).

    Use it with ``origin=0`` on darkroom's 0-based positions.
    """
    cards = astrom.get("wcs") if astrom else None
    if not cards:
        return None
    header = fits.Header()
    for key, value in cards.items():
        header[key] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, naxis=2)


def _wcs_cards(header: fits.Header) -> dict[str, Any]:
    return {
        key: value
        for key, value in header.items()
        if key and key not in ("COMMENT", "HISTORY", "") and not isinstance(value, fits.card.Undefined)
    }


def _transform_dict(t: AffineTransform | None) -> dict[str, Any] | None:
    if t is None:
        return None
    return {"matrix": np.asarray(t.matrix, float).tolist(), "offset": np.asarray(t.offset, float).tolist()}


def _failed_result(reason: str, method: str) -> SolveResult:
    return SolveResult(
        wcs=None,
        method=method,  # type: ignore[arg-type]
        n_matched=0,
        rms_arcsec=float("nan"),
        rms_pix=float("nan"),
        quality="failed",
        reason=reason,
    )


def _affine_between(wcs: WCS, reference: WCS, shape: tuple[int, int]) -> AffineTransform:
    """Affine transform from a frame's pixels to the reference frame's, through the sky (0-based)."""
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 12), np.linspace(0, ny - 1, 12))
    ra, dec = wcs.all_pix2world(gx.ravel(), gy.ravel(), 0)
    rx, ry = reference.all_world2pix(ra, dec, 0)
    return fit_affine(gx.ravel(), gy.ravel(), rx, ry)


def _split_by_pointing(
    items: list[tuple[ImageProducts, dict]], fraction: float | None
) -> list[list[tuple[ImageProducts, dict]]]:
    """Clusters of frames whose hinted pointings lie within ``fraction`` of the frame's shorter side
    (:func:`darkroom.astrom.cluster_pointings`), each in time order."""
    pointings = []
    for _, meta in items:
        ra, dec, scale = meta.get("ra_deg"), meta.get("dec_deg"), meta.get("pixel_scale_arcsec")
        side = min(meta.get("naxis1") or 0, meta.get("naxis2") or 0)
        ok = ra is not None and dec is not None and scale and side
        pointings.append((float(ra), float(dec), float(side) * float(scale) / 3600.0) if ok else None)
    return [
        sorted((items[i] for i in members), key=lambda it: (it[0].mjd_mid or 0.0, it[0].id))
        for members in cluster_pointings(pointings, fraction)
    ]


class AstrometryStage(Stage):
    """Solve the frames of each field and night: a reference frame absolutely, the others by alignment."""

    name = "astrometry"
    reads = ("extract",)
    settings = ("astrometry.solve",)

    def plan(self, session: Session) -> list[Unit]:
        cfg: SolveSettings = self.config
        done = set(
            session.scalars(
                select(AstromSolution.image_id).where(AstromSolution.provenance_id == self.provenance_id)
            )
        )
        groups: dict[tuple, list[tuple[ImageProducts, dict]]] = defaultdict(list)
        for image, meta in extracted_images(session, self.upstream):
            key = (
                image.field or "",
                image.night or "unknown",
                meta.get("instrument") or "",
                meta.get("naxis1"),
                meta.get("naxis2"),
                meta.get("binning_x"),
                meta.get("binning_y"),
            )
            groups[key].append((image, meta))
        units = []
        for key, items in sorted(groups.items(), key=lambda kv: str(kv[0])):
            for members in _split_by_pointing(items, cfg.split_field_fraction):
                if all(im.id in done for im, _ in members):
                    continue
                field, night = key[0], key[1]
                field_key = "|".join(str(k) for k in key) + f"|{members[0][0].id}"
                frames = []
                for image, meta in members:
                    frames.append(
                        {
                            "image_id": image.id,
                            "path": image.path,
                            "catalog_path": image.catalog_path,
                            "mjd": image.mjd_mid,
                            "ra_deg": meta.get("ra_deg"),
                            "dec_deg": meta.get("dec_deg"),
                            "pixel_scale_arcsec": meta.get("pixel_scale_arcsec"),
                            "fwhm_pix": (image.quality or {}).get("fwhm_pix"),
                            "name": Path(meta["raw_path"]).name,
                        }
                    )
                units.append(
                    Unit(
                        key=f"field:{night}:{short_hash(field_key)}",
                        payload={"field": field, "night": night, "field_key": field_key, "frames": frames},
                    )
                )
        return units

    # -- worker side -------------------------------------------------------------------------

    def _catalog_source(self):
        return resolve_catalog_source(self.config.reference_catalog, self.root)

    def _load_catalog(
        self, frames: list[FrameSources], mjds: list[float | None], cfg: SolveSettings | None = None
    ) -> Table | None:
        """The reference stars over every frame of the field (None without a catalog or a pointing)."""
        cfg = cfg or self.config
        if cfg.reference_catalog is None:
            return None
        centres, radii = [], []
        for frame in frames:
            ny, nx = frame.shape
            if frame.wcs is not None:
                ra, dec = frame.wcs.all_pix2world([(nx - 1) / 2.0], [(ny - 1) / 2.0], 0)
                scale = pixel_scale_arcsec(frame.wcs)
                centres.append((float(ra[0]), float(dec[0])))
            elif frame.hint is not None:
                centres.append((frame.hint.ra_deg, frame.hint.dec_deg))
                scale = frame.hint.pixel_scale_arcsec
            else:
                continue
            radii.append(0.5 * math.hypot(nx, ny) * scale / 3600.0)
        if not centres:
            log.warning("no header WCS and no pointing hint: the reference catalog cannot be placed")
            return None
        ra = np.radians([c[0] for c in centres])
        dec = np.radians([c[1] for c in centres])
        vec = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).mean(axis=1)
        ra0 = float(np.degrees(np.arctan2(vec[1], vec[0])) % 360.0)
        dec0 = float(np.degrees(np.arctan2(vec[2], np.hypot(vec[0], vec[1]))))
        spread = float(np.max(angular_separation_deg(ra0, dec0, np.degrees(ra), np.degrees(dec))))
        radius = spread + 1.15 * max(radii) + cfg.pointing_uncertainty_deg
        times = [m for m in mjds if m is not None]
        epoch = float(Time(np.mean(times), format="mjd").jyear) if times else None
        catalog = load_reference_catalog(
            self._catalog_source(),
            ra_deg=ra0,
            dec_deg=dec0,
            radius_deg=radius,
            epoch_jyear=epoch,
            cache_dir=self.product_path("catalogs", "cache"),
        )
        log.info("reference catalog: %d stars within %.3f deg", len(catalog), radius)
        return catalog

    def _choose_reference(
        self,
        frames: list[FrameSources],
        counts: list[int],
        catalog: Table | None,
        cfg: SolveSettings | None = None,
    ) -> int:
        """The reference frame: header WCS first, then the most usable sources; with a catalog,
        the first of the leading candidates that solves."""
        cfg = cfg or self.config
        order = sorted(range(len(frames)), key=lambda i: (frames[i].wcs is None, -counts[i], i))
        if catalog is None or not len(catalog):
            return order[0]
        for i in order[: cfg.max_reference_tries]:
            f = frames[i]
            if f.wcs is None and f.hint is None:
                continue
            try:
                result = solve_frame(
                    f.sources,
                    shape=f.shape,
                    catalog=catalog,
                    header_wcs=f.wcs,
                    hint=f.hint,
                    config=cfg.series.solve,
                )
            except SolveError as exc:
                log.info("reference candidate %s not solved: %s", f.name, exc.reason)
                continue
            if result.ok:
                return i
        return order[0]

    def _read_frame(self, f: dict[str, Any]) -> FrameSources:
        cfg: SolveSettings = self.config
        try:
            sources = read_table(self.root / f["catalog_path"])
        except BadInputError as exc:
            raise BadInputError(f"source catalog {Path(f['catalog_path']).name}: {exc.reason}") from exc
        try:
            with fits.open(self.root / f["path"], memmap=False) as hdul:
                header = hdul["SCI"].header.copy()
                # the WCS the frame came with, kept aside when a solution was written into SCI
                given = hdul[_GIVEN_WCS].header.copy() if _GIVEN_WCS in hdul else header
        except (OSError, KeyError) as exc:
            raise BadInputError(f"cannot read the header of {Path(f['path']).name}: {exc}") from exc
        shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
        wcs = header_wcs(given) if cfg.use_header_wcs else None
        hint = None
        if f["ra_deg"] is not None and f["dec_deg"] is not None and f["pixel_scale_arcsec"]:
            hint = PointingHint(
                ra_deg=f["ra_deg"], dec_deg=f["dec_deg"], pixel_scale_arcsec=f["pixel_scale_arcsec"]
            )
        return FrameSources(sources=sources, shape=shape, wcs=wcs, hint=hint, name=f["name"])

    def run(self, unit: Unit) -> dict[str, Any]:
        cfg: SolveSettings = self.config
        p = unit.payload
        frames: list[FrameSources] = []
        usable: list[int] = []  # rows of p["frames"] whose catalog and header could be read
        unreadable: dict[int, str] = {}
        for k, f in enumerate(p["frames"]):
            try:
                frames.append(self._read_frame(f))
                usable.append(k)
            except BadInputError as exc:  # one broken frame does not stop the field
                unreadable[k] = exc.reason
        out: list[dict[str, Any]] = []
        for k, reason in unreadable.items():
            failed = _failed_result(f"not solved: {reason}", "relative")
            out.append(self._frame_result(p["frames"][k], None, failed, p, ref_image_id=None, catalog=None))
        if not frames:
            return {"frames": out}
        solve_cfg = cfg.series.solve
        counts = []
        for frame in frames:
            if len(frame.sources):
                x, y, _ = source_positions(
                    frame.sources, flux_column=solve_cfg.flux_column, exclude_sharp=True
                )
                counts.append(int(np.count_nonzero(np.isfinite(x) & np.isfinite(y))))
            else:
                counts.append(0)
        blind_method = self._blind(frames, counts, [p["frames"][k] for k in usable])
        fwhms = [p["frames"][k].get("fwhm_pix") for k in usable]
        cfg = _scaled_by_fwhm(cfg, fwhms)
        mjds = [p["frames"][k]["mjd"] for k in usable]
        for attempt in _widening(cfg, frames):
            # pointing keyword -> a growing radius -> the whole catalogue: widen only while the
            # field's reference frame stays unsolved
            catalog = self._load_catalog(frames, mjds, attempt)
            ref = self._choose_reference(frames, counts, catalog, attempt)
            results = solve_frame_series(frames, catalog=catalog, reference_index=ref, config=attempt.series)
            if (results[ref].ok and results[ref].wcs is not None) or catalog is None:
                break
            log.info(
                "field %s: not solved within %.2f deg of the pointing; widening",
                p["field"],
                attempt.pointing_uncertainty_deg,
            )
        cfg = attempt
        if counts[ref] < solve_cfg.min_sources:  # even the best frame has (next to) no stars
            results[ref] = _failed_result(
                f"too few stars: {counts[ref]} sources, at least {solve_cfg.min_sources} needed "
                "(clouds, wrong exposure, or detection threshold too high?)",
                "reference",
            )
        ref_wcs = results[ref].wcs
        for i, result in enumerate(results):
            if result.ok or i == ref:
                continue
            results[i] = self._solve_alone(frames[i], result, catalog, ref_wcs, cfg)
        for i, result in enumerate(results):
            if result.quality == "failed" and frames[i].wcs is not None and counts[i] < solve_cfg.min_sources:
                # too few stars to check or refine it, but a header WCS is what the frame was given
                results[i] = SolveResult(
                    wcs=frames[i].wcs,
                    method="header",
                    n_matched=0,
                    rms_arcsec=float("nan"),
                    rms_pix=float("nan"),
                    quality="marginal",
                    reason=f"header WCS kept unverified: {counts[i]} sources, too few to check it "
                    f"(at least {solve_cfg.min_sources})",
                )
        ref_image_id = p["frames"][usable[ref]]["image_id"]
        for k, frame, result in zip(usable, frames, results, strict=True):
            out.append(
                self._frame_result(
                    p["frames"][k], frame, result, p, ref_image_id=ref_image_id, catalog=catalog
                )
            )
        if blind_method is not None:
            for item in out:
                if item["image_id"] == blind_method[0]:
                    item["astrom"]["blind_method"] = blind_method[1]
        n_failed = sum(r.quality == "failed" for r in results) + len(unreadable)
        log.info(
            "field %s %s: %d frames, reference %s (%s), %d failed",
            p["field"],
            p["night"],
            len(p["frames"]),
            frames[ref].name,
            results[ref].method,
            n_failed,
        )
        return {"frames": out}

    def _blind(
        self, frames: list[FrameSources], counts: list[int], rows: list[dict[str, Any]]
    ) -> tuple[int, str] | None:
        """Blind-solve the frame with most sources when no frame of the field has a header WCS or a
        pointing; its solution becomes that frame's "header" WCS (refined and checked like one).
        Returns (image id, engine used) or None."""
        cfg: SolveSettings = self.config
        if (
            cfg.blind.engine == "none"
            or not frames
            or any(f.wcs is not None or f.hint is not None for f in frames)
        ):
            return None
        i = int(np.argmax(counts))
        frame = frames[i]
        x, y, flux = source_positions(
            frame.sources, flux_column=cfg.series.solve.flux_column, exclude_sharp=True
        )
        try:
            sol = blind_solve(
                x,
                y,
                flux,
                shape=frame.shape,
                pixel_scale_arcsec=rows[i].get("pixel_scale_arcsec"),
                config=cfg.blind,
            )
        except SolveError as exc:
            log.warning("field of %s: no pointing and blind solving failed: %s", frame.name, exc.reason)
            return None
        log.info("%s solved blind by %s", frame.name, sol.method)
        frames[i] = dataclasses.replace(frame, wcs=sol.wcs)
        return rows[i]["image_id"], sol.method

    def _solve_alone(
        self,
        frame: FrameSources,
        aligned: SolveResult,
        catalog: Table | None,
        ref_wcs: WCS | None,
        cfg: SolveSettings | None = None,
    ) -> SolveResult:
        """A frame that did not align: its own header WCS or hint, tied to the reference through the sky."""
        cfg = cfg or self.config
        if frame.wcs is None and (catalog is None or frame.hint is None):
            return aligned
        try:
            alone = solve_frame(
                frame.sources,
                shape=frame.shape,
                catalog=catalog,
                header_wcs=frame.wcs,
                hint=frame.hint,
                config=cfg.series.solve,
            )
        except SolveError as exc:
            aligned.reason = f"{aligned.reason}; alone: {exc.reason}"
            return aligned
        if not alone.ok:
            aligned.reason = f"{aligned.reason}; alone: {alone.reason}"
            return aligned
        if ref_wcs is not None and alone.wcs is not None:
            alone.to_reference = _affine_between(alone.wcs, ref_wcs, frame.shape)
        alone.reason = "; ".join(
            r for r in (aligned.reason, f"solved on its own ({alone.method})", alone.reason) if r
        )
        return alone

    def _frame_result(
        self,
        f: dict[str, Any],
        frame: FrameSources | None,
        result: SolveResult,
        p: dict[str, Any],
        *,
        ref_image_id: int | None,
        catalog: Table | None,
    ) -> dict[str, Any]:
        quality, reason = result.quality, result.reason
        if result.wcs is None and quality == "good":
            quality = "marginal"
            reason = reason or "no absolute WCS: aligned to the field's reference frame only"
        wcs_cards = wcs_path = centre = scale = image_sha256 = None
        if result.wcs is not None and frame is not None:
            header = result.to_header()
            header["ASTQUAL"] = quality
            wcs_cards = _wcs_cards(header)
            out = self.product_path("catalogs", self.provenance_id, f"{raw_stem(f['path'])}.wcs")
            with atomic_path(out) as tmp:
                fits.PrimaryHDU(header=header).writeto(tmp)
            wcs_path = self.relative(out)
            image_sha256 = self._wcs_into_image(f["path"], header)
            ny, nx = frame.shape
            ra, dec = result.wcs.all_pix2world([(nx - 1) / 2.0], [(ny - 1) / 2.0], 0)
            centre = (float(ra[0]) % 360.0, float(dec[0]))
            scale = pixel_scale_arcsec(result.wcs)
        astrom = {
            "provenance_id": self.provenance_id,
            "method": result.method,
            "quality": quality,
            "n_matched": result.n_matched,
            "rms_arcsec": result.rms_arcsec,
            "rms_pix": result.rms_pix,
            "reason": reason,
            "sip_order": result.sip_order,
            "wcs": wcs_cards,
            "wcs_path": wcs_path,
            "to_reference": _transform_dict(result.to_reference),
            "reference_image_id": ref_image_id,
            "field_key": p["field_key"],
            "n_frames": len(p["frames"]),
            "catalog": None
            if catalog is None
            else {"name": str(catalog.meta.get("catalog", "")), "n_stars": len(catalog)},
            "centre_ra_deg": None if centre is None else centre[0],
            "centre_dec_deg": None if centre is None else centre[1],
            "pixel_scale_arcsec": scale,
        }
        return {
            "image_id": f["image_id"],
            "flag": quality,
            "astrom": jsonable(astrom),
            "image_sha256": image_sha256,
        }

    def _wcs_into_image(self, rel_path: str, wcs_header: fits.Header) -> str | None:
        """Write the solution into the calibrated image's SCI header (old WCS cards replaced), so
        that any FITS viewer shows it; returns the file's new checksum (None when unreadable).
        Only the header blocks change: the planes are copied as bytes."""
        path = self.root / rel_path
        try:
            with fits.open(path, memmap=False) as hdul:
                sci_name = "SCI" if "SCI" in hdul else 0
                append = []
                if _GIVEN_WCS not in hdul:
                    # keep the frame's own WCS, so that another provenance starts from what it was given
                    cards = hdul[sci_name].header.cards
                    given = fits.Header([c for c in cards if c.keyword and _WCS_KEY.match(c.keyword)])
                    given["EXTNAME"] = (_GIVEN_WCS, "the WCS the calibrated frame came with")
                    append.append(given)
        except (OSError, KeyError) as exc:
            log.warning("solution not written into %s: %s", path.name, exc)
            return None

        def update(sci: fits.Header) -> None:
            for key in [k for k in sci if _WCS_KEY.match(k)]:
                sci.remove(key, ignore_missing=True, remove_all=True)
            for card in wcs_header.cards:
                if (card.keyword and _WCS_KEY.match(card.keyword)) or card.keyword == "ASTQUAL":
                    sci[card.keyword] = (card.value, card.comment)
            sci.add_history("darkroom.astrom: WCS from the astrometry stage")

        try:
            return rewrite_header(path, sci_name, update, append=append)
        except BadInputError as exc:
            log.warning("solution not written into %s: %s", path.name, exc.reason)
            return None

    def record(self, session: Session, unit: Unit, result: dict[str, Any]) -> None:
        for item in result["frames"]:
            a = item["astrom"]
            session.add(
                AstromSolution(
                    image_id=item["image_id"],
                    provenance_id=self.provenance_id,
                    method=a.get("method"),
                    wcs=a.get("wcs") or {},
                    n_matches=a.get("n_matched"),
                    rms_arcsec=a.get("rms_arcsec"),
                    flag=item["flag"],
                    reason=a.get("reason"),
                    values={k: v for k, v in a.items() if k != "provenance_id"},
                )
            )
            if item.get("image_sha256"):  # the solution was written into the calibrated file
                image = session.get(Image, item["image_id"])
                image.sha256 = item["image_sha256"]
            if item["flag"] == "failed":
                log.warning("astrometry of image %d failed: %s", item["image_id"], a["reason"])

    def forget_products(self, session: Session) -> None:
        """Delete this provenance's solutions and their WCS files."""
        rows = session.scalars(
            select(AstromSolution).where(AstromSolution.provenance_id == self.provenance_id)
        ).all()
        paths = [(r.values or {}).get("wcs_path") for r in rows]
        session.execute(delete(AstromSolution).where(AstromSolution.provenance_id == self.provenance_id))
        self.remove_files(paths)
