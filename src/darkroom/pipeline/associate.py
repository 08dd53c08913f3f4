"""The associate stage: the detections of a field's frames become sources.

Wiring only: :func:`darkroom.timeseries.associate` does the matching, :mod:`darkroom.timeseries.sources`
turns its groups into sources.

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
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from darkroom.astrom import AffineTransform
from darkroom.errors import SolveError
from darkroom.io.fitsheader import value_field
from darkroom.io.tables import read_parquet_columns
from darkroom.pipeline._products import short_hash
from darkroom.pipeline._shared import affine_from_dict, load_reference
from darkroom.pipeline.astrometry import wcs_from_astrom
from darkroom.pipeline.products import ImageProducts, image_products
from darkroom.pipeline.stage import Stage, Unit
from darkroom.repo.models import Association, Image, Measurement, Source
from darkroom.timeseries.settings import AssociateSettings

if TYPE_CHECKING:
    from astropy.table import Table

# This module is imported for every `darkroom run` (pipeline.stages lists every stage); the
# matching algorithms (scipy, astropy.wcs via darkroom.phot / darkroom.timeseries) load when
# a unit runs or is recorded.

__all__ = ["AssociateSettings", "AssociateStage"]

log = logging.getLogger(__name__)


#: the numeric WCS cards :class:`FrameWcs` sets on a copy (the frames' solutions differ in these)
_WCS_NUMBERS = re.compile(r"^(CRPIX[12]|CRVAL[12]|CDELT[12]|PC[12]_[12]|LONPOLE|LATPOLE)$")


def card_number(value: int | float) -> float:
    """``float(Card(key, value).image[10:30])``: a number as written in the value field of the
    fixed-format card astropy makes for it (20 characters, right-justified), read back as wcslib
    reads it. The field is astropy's own value formatting (:func:`darkroom.io.fitsheader.value_field`),
    without making the card: ~8 instead of ~100 us, 10 numbers a frame (test_pipeline_associate
    compares it with the card's field)."""
    return float(value_field(value))


class FrameWcs:
    """The WCS of each frame's recorded cards (:func:`~darkroom.pipeline.astrometry.wcs_from_astrom`'s),
    made by copying a frame's with the same layout.

    astropy builds a WCS from cards through a Header, its text, a parse by wcslib and a fix-up
    (~1.3 ms each for a TAN solution); a field's frames have solutions of one layout (the same
    cards and the same values but for the reference pixel and value, the PC matrix, the pixel
    steps and the poles). The first frame of a layout is built as
    :func:`wcs_from_astrom` builds it; the next are copies of it with those numbers set to what
    wcslib reads from astropy's card for the recorded value (``float`` of the card's value text),
    then ``wcsset`` (~0.3 ms). The same transformation to the last bit (checked in the tests);
    any other layout (SIP terms, CD matrix, no LONPOLE/LATPOLE cards) is built astropy's way.
    """

    def __init__(self) -> None:
        self._built: dict[tuple, Any] = {}

    def __call__(self, cards: dict[str, Any] | None) -> Any:
        if not cards or "LONPOLE" not in cards or "LATPOLE" not in cards:
            return wcs_from_astrom({"wcs": cards})
        numbers = {k: v for k, v in cards.items() if _WCS_NUMBERS.match(k)}
        # the solution's own cards (ASTRMS, ASTNMAT...) are not WCS keywords: wcslib ignores them
        layout = tuple(sorted(numbers)) + tuple(
            sorted((k, repr(v)) for k, v in cards.items() if k not in numbers and not k.startswith("AST"))
        )
        first = self._built.get(layout)
        if first is None or not all(isinstance(v, int | float) for v in numbers.values()):
            wcs = wcs_from_astrom({"wcs": cards})
            self._built.setdefault(layout, wcs.deepcopy())  # a copy: the caller may change its own
            return wcs
        wcs = first.deepcopy()
        p = wcs.wcs
        crpix, crval, cdelt, pc = p.crpix.copy(), p.crval.copy(), p.cdelt.copy(), p.pc.copy()
        for key, value in numbers.items():
            x = card_number(value)  # the value as written in the card wcslib parses
            if key == "LONPOLE":
                p.lonpole = x
            elif key == "LATPOLE":
                p.latpole = x
            elif key.startswith("PC"):
                pc[int(key[2]) - 1, int(key[4]) - 1] = x
            else:
                {"CRPIX": crpix, "CRVAL": crval, "CDELT": cdelt}[key[:5]][int(key[5]) - 1] = x
        p.crpix, p.crval, p.cdelt, p.pc = crpix, crval, cdelt, pc
        p.set()
        return wcs


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

    def _detections(self, frames: list[dict], coords: str, frame_wcs: FrameWcs) -> Table:
        from astropy.table import Table

        from darkroom.phot import pixel_to_sky
        from darkroom.timeseries.sources import usable_detections

        cfg: AssociateSettings = self.config
        parts: dict[str, list] = defaultdict(list)
        for f in frames:
            n, cat = read_parquet_columns(
                self.root / f["catalog_path"], ("x", "y", "snr", "sharp", "flux_aper_adu")
            )
            if not n:
                continue
            x, y, mag = usable_detections(cat, cfg, exptime_s=f.get("exptime_s"))
            t = affine_from_dict(f["to_reference"]) or AffineTransform.identity()
            xr, yr = t.apply(x, y)
            if coords == "sky":
                ra, dec = pixel_to_sky(frame_wcs(f["wcs"]), x, y)
                parts["ra"].append(ra)
                parts["dec"].append(dec)
            parts["x"].append(xr)
            parts["y"].append(yr)
            parts["image_id"].append(np.full(x.size, f["image_id"], np.int64))
            parts["mjd_utc"].append(np.full(x.size, np.nan if f["mjd"] is None else f["mjd"]))
            parts["filter"].append(np.full(x.size, f["filter"], dtype=object))
            parts["mag"].append(mag)
        if not parts:
            return Table()
        out = Table({k: np.concatenate(v) for k, v in parts.items()})
        out["filter"] = np.asarray(out["filter"]).astype(str)
        return out

    def run(self, unit: Unit) -> dict[str, Any]:
        from astropy.table import Table

        from darkroom.timeseries import AssociationConfig, associate
        from darkroom.timeseries.sources import field_sources, match_radius, min_epochs_for

        cfg: AssociateSettings = self.config
        p = unit.payload
        coords = p["coords"]
        frames = p["frames"]
        radius = match_radius(
            [f["rms_arcsec" if coords == "sky" else "rms_pix"] for f in frames], cfg, coords
        )
        frame_wcs = FrameWcs()
        det = self._detections(frames, coords, frame_wcs)
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
        new, updated = field_sources(
            summary,
            sid,
            np.asarray(det["x"], float) if len(det) else np.zeros(0),
            np.asarray(det["y"], float) if len(det) else np.zeros(0),
            coords=coords,
            known_ids=set(known["source_id"].tolist()),
            min_epochs=min_epochs_for(cfg, len(frames), new_field=not n_known),
        )
        if coords == "sky" and cfg.reference_stars_mag_max is not None and self.reference is not None:
            new.extend(self._reference_sources(frames, summary, known, radius, frame_wcs))
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
        self, frames: list[dict], summary: Table, known: dict, radius: float, frame_wcs: FrameWcs
    ) -> list[dict]:
        """Reference stars on the field's frames with no source yet (never detected)."""
        from darkroom.phot import sky_to_pixel
        from darkroom.phot.frame import frame_cone
        from darkroom.timeseries.sources import on_any_frame, undetected_reference_stars

        source, ref_mag_column = self.reference  # type: ignore[misc]
        if source is None:
            return []
        cfg: AssociateSettings = self.config
        ref_frame = frames[0]
        wcs = frame_wcs(ref_frame["wcs"])
        nx, ny = (int(v) if v else 0 for v in ref_frame["naxis"])
        if not nx or not ny:
            return []
        ra0, dec0, radius_deg = frame_cone(wcs, (ny, nx), margin=1.2)
        cat = load_reference(self.root, source, ra=ra0, dec=dec0, radius=radius_deg, mjd=ref_frame["mjd"])
        if not len(cat) or ref_mag_column not in cat.colnames:
            return []
        mag = np.ma.filled(np.ma.asarray(cat[ref_mag_column], float), np.nan)
        keep = np.isfinite(mag) & (mag <= cfg.reference_stars_mag_max)
        cat, mag = cat[keep], mag[keep]
        ra = np.asarray(cat["ra_deg"], float)
        dec = np.asarray(cat["dec_deg"], float)
        shapes = [
            tuple(int(v) if v else d for v, d in zip(f["naxis"], (nx, ny), strict=True)) for f in frames
        ]
        on = on_any_frame(ra, dec, [(frame_wcs(f["wcs"]), *n) for f, n in zip(frames, shapes, strict=True)])
        have_ra = [np.asarray(summary["ra"], float)] if "ra" in summary.colnames and len(summary) else []
        have_dec = [np.asarray(summary["dec"], float)] if "dec" in summary.colnames and len(summary) else []
        if known["source_id"].size:
            have_ra.append(known["ra"])
            have_dec.append(known["dec"])
        sel = undetected_reference_stars(
            ra,
            dec,
            on_frames=on,
            have_ra=np.concatenate(have_ra) if have_ra else np.zeros(0),
            have_dec=np.concatenate(have_dec) if have_dec else np.zeros(0),
            radius_arcsec=radius,
        )
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
        from darkroom.timeseries.sources import SourceMeans, merge_means

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
            merged = merge_means(
                SourceMeans(src.ra_deg, src.dec_deg, src.n_epochs or 0, dict(src.mean_mag or {})),
                SourceMeans(item["ra"], item["dec"], item["n_epochs"], item["mean_mag"]),
            )
            src.ra_deg, src.dec_deg = merged.ra_deg, merged.dec_deg
            src.mean_mag, src.n_epochs = merged.mean_mag, merged.n_epochs
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
