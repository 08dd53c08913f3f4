"""The per-image products of chosen provenances, read together: one row per product in the registry.

Every per-image product has its own table keyed by (image, provenance):
``source_catalog`` (extract), ``image_quality`` (quality), ``astrom_solution``
(astrometry), ``association`` (associate), ``photcal`` (photometry) and
``transparency`` (lightcurves). A stage reads the products of the stages it declares
in ``reads`` by passing its ``upstream`` provenance ids to :func:`image_products`;
the Python API and ``darkroom status`` pass the provenance the user chose (or None:
the newest product of each kind).

"Poor frame" is a query, not a flag a stage edits: a frame is poor under a quality
provenance when its ``image_quality`` row says so, and under a light-curve provenance
when its ``transparency`` row does (:func:`poor_image_ids`).

The products of a night that are not per image (masters, coadds, the targets' light
curves) are read here too (:func:`night_masters`, :func:`night_coadds`,
:func:`target_lightcurves`), with the same choice of provenances.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from darkroom.repo.models import (
    Association,
    AstromSolution,
    Calib,
    Coadd,
    Exposure,
    Image,
    ImageQuality,
    Lightcurve,
    PhotCal,
    SourceCatalog,
    Transparency,
)

__all__ = [
    "PRODUCT_TABLES",
    "ImageProducts",
    "extracted_images",
    "image_products",
    "night_coadds",
    "night_masters",
    "poor_image_ids",
    "target_lightcurves",
]

#: product kind -> table (one row per image and provenance)
PRODUCT_TABLES: dict[str, Any] = {
    "catalog": SourceCatalog,
    "quality": ImageQuality,
    "astrom": AstromSolution,
    "association": Association,
    "photcal": PhotCal,
    "transparency": Transparency,
}


@dataclass
class ImageProducts:
    """A calibrated image with its products of the chosen provenances (each None when absent).

    The ``quality``, ``astrom`` and ``photcal`` properties give the products as plain
    dictionaries (the figures, the solution, the zero point with its ``association`` and
    ``transparency``), each carrying the ``provenance_id`` that made it.
    """

    image: Image
    meta: dict[str, Any] = field(default_factory=dict)  # exposure metadata and ``raw_path``
    exposure: Exposure | None = None  # the raw exposure (file, exposure time, state)
    catalog: SourceCatalog | None = None
    quality_row: ImageQuality | None = None
    astrom_row: AstromSolution | None = None
    association: Association | None = None
    photcal_row: PhotCal | None = None
    transparency: Transparency | None = None

    # -- the image's own columns ------------------------------------------------------
    @property
    def id(self) -> int:
        return self.image.id

    @property
    def exposure_id(self) -> int:
        return self.image.exposure_id

    @property
    def path(self) -> str:
        return self.image.path

    @property
    def field(self) -> str | None:
        return self.image.field

    @property
    def filter(self) -> str | None:
        return self.image.filter

    @property
    def night(self) -> str | None:
        return self.image.night

    @property
    def mjd_mid(self) -> float | None:
        return self.image.mjd_mid

    @property
    def time_mid_utc(self):
        return self.image.time_mid_utc

    @property
    def calib(self) -> dict[str, Any]:
        """What calibration made (gain, read noise, masters used...)."""
        return dict(self.image.calib or {})

    # -- products -----------------------------------------------------------------------
    @property
    def catalog_path(self) -> str | None:
        return self.catalog.path if self.catalog is not None else None

    @property
    def quality(self) -> dict[str, Any]:
        """Figures of the extract stage, ``calib``, and the quality verdict (``poor_reason``)."""
        out: dict[str, Any] = {"calib": self.calib}
        if self.catalog is not None:
            out.update(self.catalog.values or {})
            out["detect"] = {"provenance_id": self.catalog.provenance_id, "catalog_path": self.catalog.path}
        if self.quality_row is not None:
            out["poor_reason"] = self.quality_row.reason
            out["flag"] = {"provenance_id": self.quality_row.provenance_id, **(self.quality_row.values or {})}
        return out

    @property
    def quality_flag(self) -> str | None:
        return self.quality_row.flag if self.quality_row is not None else None

    @property
    def astrom(self) -> dict[str, Any]:
        if self.astrom_row is None:
            return {}
        return {**(self.astrom_row.values or {}), "provenance_id": self.astrom_row.provenance_id}

    @property
    def astrom_flag(self) -> str | None:
        return self.astrom_row.flag if self.astrom_row is not None else None

    @property
    def photcal(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.photcal_row is not None:
            out.update(self.photcal_row.values or {})
            out["provenance_id"] = self.photcal_row.provenance_id
        if self.association is not None:
            out["association"] = {
                **(self.association.values or {}),
                "provenance_id": self.association.provenance_id,
                "field": self.association.field,
            }
        if self.transparency is not None:
            out["transparency"] = {
                **(self.transparency.values or {}),
                "provenance_id": self.transparency.provenance_id,
                "value": self.transparency.value,
                "poor": self.transparency.flag == "poor",
            }
        return out

    @property
    def poor(self) -> bool:
        """Poor under the chosen provenances: by the quality limits or by the transparency."""
        return (self.quality_flag == "poor") or (
            self.transparency is not None and self.transparency.flag == "poor"
        )

    @property
    def poor_reason(self) -> str | None:
        reasons = []
        if self.quality_flag == "poor" and self.quality_row.reason:
            reasons.append(self.quality_row.reason)
        if self.transparency is not None and self.transparency.flag == "poor" and self.transparency.reason:
            reasons.append(self.transparency.reason)
        return "; ".join(reasons) or None


def _rows_by_image(
    session: Session,
    table: Any,
    provenances: Sequence[str] | None,
    image_ids: Sequence[int] | None,
    of_images: Any = None,
) -> dict[int, Any]:
    stmt = select(table)
    if provenances is not None:
        stmt = stmt.where(table.provenance_id.in_(list(provenances)))
    if image_ids is not None:
        stmt = stmt.where(table.image_id.in_(list(image_ids)))
    if of_images is not None:  # a SELECT of image ids
        stmt = stmt.where(table.image_id.in_(of_images))
    out: dict[int, Any] = {}
    for row in session.scalars(stmt.order_by(table.id)):
        out[row.image_id] = row  # the newest row wins when several provenances are chosen
    return out


def image_products(
    session: Session,
    provenances: Iterable[str] | None = None,
    *,
    need: Sequence[str] = (),
    image_ids: Sequence[int] | None = None,
    image_provenances: Iterable[str] | None = None,
    nights: Sequence[str] | None = None,
    only_ok: bool = True,
) -> list[ImageProducts]:
    """Calibrated images with their products of ``provenances`` (None: the newest of each kind).

    ``need`` names product kinds (keys of :data:`PRODUCT_TABLES`) an image must have to be
    listed; ``image_provenances`` restricts the images to those calibrations, ``nights`` to
    those nights; ``only_ok`` leaves out images of quarantined exposures. Ordered by
    mid-exposure time.
    """
    provs = None if provenances is None else list(provenances)
    stmt = (
        select(Image, Exposure)
        .join(Exposure, Exposure.id == Image.exposure_id)
        .order_by(Image.mjd_mid, Image.id)
    )
    if only_ok:
        stmt = stmt.where(Exposure.state == "ok")
    of_nights = None if nights is None else select(Image.id).where(Image.night.in_(list(nights)))
    if of_nights is not None:
        stmt = stmt.where(Image.id.in_(of_nights))
    if image_ids is not None:
        stmt = stmt.where(Image.id.in_(list(image_ids)))
    if image_provenances is not None:
        stmt = stmt.where(Image.provenance_id.in_(list(image_provenances)))
    products = {
        kind: _rows_by_image(session, table, provs, image_ids, of_nights)
        for kind, table in PRODUCT_TABLES.items()
    }
    out = []
    for image, exposure in session.execute(stmt).all():
        item = ImageProducts(
            image=image,
            meta={**(exposure.meta or {}), "raw_path": exposure.path},
            exposure=exposure,
            catalog=products["catalog"].get(image.id),
            quality_row=products["quality"].get(image.id),
            astrom_row=products["astrom"].get(image.id),
            association=products["association"].get(image.id),
            photcal_row=products["photcal"].get(image.id),
            transparency=products["transparency"].get(image.id),
        )
        if all(_has(item, kind) for kind in need):
            out.append(item)
    return out


def extracted_images(session: Session, extract_provenance: Sequence[str]) -> list[tuple[ImageProducts, dict]]:
    """Images with a source catalogue of one of ``extract_provenance``, with exposure metadata."""
    return [(ip, ip.meta) for ip in image_products(session, extract_provenance, need=("catalog",))]


def _has(item: ImageProducts, kind: str) -> bool:
    attr = {"quality": "quality_row", "astrom": "astrom_row", "photcal": "photcal_row"}.get(kind, kind)
    return getattr(item, attr) is not None


def poor_image_ids(
    session: Session, *, quality: Iterable[str] = (), transparency: Iterable[str] = ()
) -> dict[int, str]:
    """Images that are poor under the given quality and/or light-curve provenances, with the reason."""
    out: dict[int, list[str]] = {}
    q, t = list(quality), list(transparency)
    if q:
        for image_id, reason in session.execute(
            select(ImageQuality.image_id, ImageQuality.reason).where(
                ImageQuality.provenance_id.in_(q), ImageQuality.flag == "poor"
            )
        ):
            out.setdefault(image_id, []).append(reason or "poor")
    if t:
        for image_id, reason in session.execute(
            select(Transparency.image_id, Transparency.reason).where(
                Transparency.provenance_id.in_(t), Transparency.flag == "poor"
            )
        ):
            out.setdefault(image_id, []).append(reason or "low transparency")
    return {k: "; ".join(v) for k, v in out.items()}


# --- the products of a night that are not per image ------------------------------------------


def _of(stmt: Any, table: Any, provenances: Iterable[str] | None) -> Any:
    return stmt if provenances is None else stmt.where(table.provenance_id.in_(list(provenances)))


def night_masters(session: Session, night: str, provenances: Iterable[str] | None = None) -> list[Calib]:
    """The master calibrations made from a night's frames (of ``provenances``; None: all), by kind."""
    stmt = select(Calib).where(Calib.night == night).order_by(Calib.kind, Calib.id)
    return list(session.scalars(_of(stmt, Calib, provenances)))


def night_coadds(session: Session, night: str, provenances: Iterable[str] | None = None) -> list[Coadd]:
    """The coadds of one night (of ``provenances``; None: all), by field and filter."""
    stmt = select(Coadd).where(Coadd.night == night).order_by(Coadd.field, Coadd.filter, Coadd.id)
    return list(session.scalars(_of(stmt, Coadd, provenances)))


def target_lightcurves(session: Session, provenances: Iterable[str] | None = None) -> list[Lightcurve]:
    """The light curves our own photometry made of the targets (the lightcurves stage), one per
    target: of ``provenances``, the newest when several hold one (None: of any provenance)."""
    stmt = select(Lightcurve).where(Lightcurve.survey == "darkroom", Lightcurve.path.is_not(None))
    newest: dict[str, Lightcurve] = {}
    for row in session.scalars(_of(stmt, Lightcurve, provenances).order_by(Lightcurve.id)):
        newest[row.object_id or row.key] = row
    return [newest[name] for name in sorted(newest)]
