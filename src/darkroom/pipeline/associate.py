"""The associate stage: the detections of a field's frames become sources.

Wiring only: :func:`darkroom.timeseries.associate` does the matching.

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
    Registry: ``Source`` rows (``field`` = OBJECT, or ``OBJECT@exp<reference exposure id>`` for a
    reference pixel frame; mean ``ra_deg, dec_deg``; mean ``x_ref, y_ref`` in the
    reference frame; ``n_epochs`` = frames with a detection; ``mean_mag`` per filter,
    instrumental here and replaced by the measured mean in ``lightcurves``) and
    one ``association`` row per image (provenance, field; ``values``: coords, radius).

Pixel convention: 0-based pixel centres (sep); shapes ``(ny, nx)``; fluxes in the SCI
unit (adu); times MJD UTC at mid-exposure.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any

import numpy as np
from astropy.table import Table
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from darkroom.astrom import AffineTransform
from darkroom.errors import SolveError
from darkroom.io.tables import read_parquet_columns
from darkroom.phot import (
    match_catalogs,
    pixel_to_sky,
    sky_to_pixel,
)
from darkroom.pipeline._products import short_hash
from darkroom.pipeline._shared import affine_from_dict, load_reference
from darkroom.pipeline.astrometry import wcs_from_astrom
from darkroom.pipeline.products import ImageProducts, image_products
from darkroom.pipeline.stage import Stage, Unit
from darkroom.repo.models import (
    Association,
    Image,
    Measurement,
    Source,
)
from darkroom.timeseries import AssociationConfig, associate
from darkroom.timeseries.settings import AssociateSettings

__all__ = ["AssociateSettings", "AssociateStage"]

log = logging.getLogger(__name__)


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

    def _coords(self, items: list[tuple[ImageProducts, dict]]) -> str:
        mode = self.config.coords
        if mode != "auto":
            return mode
        with_wcs = sum(bool((im.astrom or {}).get("wcs")) for im, _ in items)
        return "sky" if with_wcs == len(items) else "pixel"

    def plan(self, session: Session) -> list[Unit]:
        items = [
            (im, im.meta)
            for im in image_products(session, self.upstream, need=("catalog", "astrom"))
            if im.astrom_flag != "failed"
        ]
        done = set(
            session.scalars(
                select(Association.image_id).where(Association.provenance_id == self.provenance_id)
            )
        )
        by_field: dict[str, list[tuple[ImageProducts, dict]]] = defaultdict(list)
        for im, meta in items:
            by_field[im.field or ""].append((im, meta))
        units = []
        for field, members in sorted(by_field.items()):
            if self._coords(members) == "sky":
                groups = [(field, "sky", members)]
            else:
                # A pixel field is named by its reference frame's exposure (registered once, at
                # ingest), not its image id: image ids follow the order drivers record in.
                by_ref: dict[int, list] = defaultdict(list)
                for im, meta in members:
                    by_ref[int(im.astrom.get("reference_image_id") or im.id)].append((im, meta))
                exposure_of = {im.id: im.exposure_id for im, _ in items}
                for ref in by_ref:
                    if ref not in exposure_of:
                        ref_image = session.get(Image, ref)
                        exposure_of[ref] = ref_image.exposure_id if ref_image is not None else -ref
                groups = [(f"{field}@exp{exposure_of[ref]}", "pixel", m) for ref, m in sorted(by_ref.items())]
            for source_field, coords, group in groups:
                todo = [(im, meta) for im, meta in group if im.id not in done]
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
                        key=f"field:{short_hash(source_field)}:{short_hash(','.join(str(im.exposure_id) for im, _ in todo))}",
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
    def _frame(im: ImageProducts, meta: dict) -> dict[str, Any]:
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
            n, cat = read_parquet_columns(
                self.root / f["catalog_path"], ("x", "y", "snr", "sharp", "flux_aper_adu")
            )
            if not n:
                continue
            x = np.asarray(cat["x"], float)
            y = np.asarray(cat["y"], float)
            keep = np.isfinite(x) & np.isfinite(y)
            if "snr" in cat:
                keep &= np.nan_to_num(np.asarray(cat["snr"], float), nan=0.0) >= cfg.min_snr
            if cfg.exclude_sharp and "sharp" in cat:
                keep &= ~np.asarray(cat["sharp"], bool)
            x, y = x[keep], y[keep]
            flux = np.asarray(cat["flux_aper_adu"], float)[keep] if "flux_aper_adu" in cat else None
            t = affine_from_dict(f["to_reference"]) or AffineTransform.identity()
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
        cat = load_reference(
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
        t = affine_from_dict(ref_frame["to_reference"]) or AffineTransform.identity()
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
        values = {k: v for k, v in assoc.items() if k not in ("provenance_id", "field")}
        for image_id in result["image_ids"]:
            session.add(
                Association(image_id=image_id, provenance_id=self.provenance_id, field=field, values=values)
            )

    def forget_products(self, session: Session) -> None:
        """Delete this provenance's sources (and any measurement of them) and the association marks."""
        ids = select(Source.id).where(Source.provenance_id == self.provenance_id)
        session.execute(delete(Measurement).where(Measurement.source_id.in_(ids)))
        session.execute(delete(Association).where(Association.provenance_id == self.provenance_id))
        session.execute(delete(Source).where(Source.provenance_id == self.provenance_id))
