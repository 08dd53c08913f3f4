"""The astrometry stage: the frames of each field and night solved against the reference catalogue.

Wiring only: :mod:`darkroom.astrom.field` solves a field's frames together,
:mod:`darkroom.catalogs` reads the reference catalog, :mod:`darkroom.astrom.wcscards` turns a
solution into header cards.

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

import logging
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astropy.io import fits
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from darkroom.astrom.pointing import cluster_pointings
from darkroom.astrom.settings import SolveSettings
from darkroom.catalogs import load_reference_catalog, read_table, resolve_catalog_source
from darkroom.config import AstrometrySettings
from darkroom.errors import BadInputError
from darkroom.io.fitsheader import (
    CardImages,
    HeaderRewrite,
    plan_card_rewrite,
    plan_header_rewrite,
    read_header_texts,
    read_headers,
)
from darkroom.pipeline._products import jsonable, raw_stem, short_hash
from darkroom.pipeline.products import ImageProducts, extracted_images
from darkroom.pipeline.stage import Stage, Unit
from darkroom.repo.models import AstromSolution, Image
from darkroom.repo.store import atomic_write_bytes

if TYPE_CHECKING:
    from astropy.table import Table
    from astropy.wcs import WCS

    from darkroom.astrom import FrameSources, SolveResult

# This module is imported for every `darkroom run` (pipeline.stages lists every stage); the
# solvers and WCS handling (scipy, astropy.wcs, astropy.coordinates) load when a unit runs.

__all__ = ["AstrometrySettings", "AstrometryStage", "SolveSettings", "wcs_from_astrom"]

log = logging.getLogger(__name__)


#: frames whose solution files are written at once. A write is mostly CPU (hashing the 9.4 MB
#: image ~5 ms, its fsyncs 1-3 ms), and the writers now work while the stage's thread still makes
#: rows: on 2 cores, 4 writers took CPU from it (ARCSAT night, wall 3.34 s as before), 2 did not (2.77 s)
_WRITE_THREADS = 2


@dataclass(frozen=True)
class _SolutionFiles:
    """What carries one frame's solution: the header-only ``.wcs`` file and the calibrated image."""

    wcs_path: Path  #: the ``.wcs`` file
    wcs_bytes: bytes  #: its content
    image_path: str  #: the calibrated image, relative to the repository
    images: list[tuple[str, str]]  #: the WCS cards written into the image's SCI header, (keyword, image)
    header: Callable[[], fits.Header]  #: the solution's header (for a SCI header of unusual cards)


def wcs_from_astrom(astrom: dict[str, Any]) -> WCS | None:
    """The astropy WCS recorded in an astrometric solution (``astrom_solution.values``) (None when the
    frame has none). Use it with ``origin=0`` on darkroom's 0-based positions."""
    from darkroom.astrom.wcscards import wcs_from_cards

    return wcs_from_cards(astrom.get("wcs") if astrom else None)


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
                # named by its first frame's exposure (ingest's order), not by its image row: two
                # drivers recording calibrate's images at once number them in their own order
                field_key = "|".join(str(k) for k in key) + f"|{members[0][0].exposure_id}"
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

    def _load_catalog(
        self, frames: list[FrameSources], mjds: list[float | None], cfg: SolveSettings
    ) -> Table | None:
        """The reference stars over every frame of the field (None without a catalog or a pointing)."""
        from darkroom.astrom.field import catalog_cone

        if cfg.reference_catalog is None:
            return None
        cone = catalog_cone(frames, mjds, pointing_uncertainty_deg=cfg.pointing_uncertainty_deg)
        if cone is None:
            log.warning("no header WCS and no pointing hint: the reference catalog cannot be placed")
            return None
        catalog = load_reference_catalog(
            resolve_catalog_source(cfg.reference_catalog, self.root),
            ra_deg=cone.ra_deg,
            dec_deg=cone.dec_deg,
            radius_deg=cone.radius_deg,
            epoch_jyear=cone.epoch_jyear,
            cache_dir=self.product_path("catalogs", "cache"),
        )
        log.info("reference catalog: %d stars within %.3f deg", len(catalog), cone.radius_deg)
        return catalog

    def _read_sources(self, path: Path) -> Table:
        """The columns of a frame's source catalog that the solver reads
        (:func:`darkroom.astrom.solve.source_columns` with the solver's and the alignment's flux
        columns); other formats than the pipeline's Parquet whole. A Parquet catalog's YAML
        header (units, descriptions, the extract stage's meta) is not parsed: 4.2 -> 0.8 ms a frame."""
        from astropy.table import Table

        from darkroom.astrom.solve import source_columns
        from darkroom.io.tables import read_parquet_columns

        if path.suffix != ".parquet":
            return read_table(path)
        cfg: SolveSettings = self.config
        wanted = source_columns(cfg.series.solve.flux_column, cfg.series.align.flux_column)
        try:
            _, cols = read_parquet_columns(path, wanted)
        except Exception as exc:  # pyarrow raises several types for unreadable files
            raise BadInputError(f"cannot read catalog {path.name}: {exc}") from exc
        return Table(cols, copy=False)

    def _read_frame(self, f: dict[str, Any]) -> FrameSources:
        from darkroom.astrom import PointingHint
        from darkroom.astrom.relative import LazyWcsFrame
        from darkroom.astrom.wcscards import (
            GIVEN_WCS_EXTNAME,
            header_as_given,
            header_wcs,
            header_wcs_images,
        )

        cfg: SolveSettings = self.config
        try:
            sources = self._read_sources(self.root / f["catalog_path"])
        except BadInputError as exc:
            raise BadInputError(f"source catalog {Path(f['catalog_path']).name}: {exc.reason}") from exc
        path = self.root / f["path"]
        names = ("SCI", GIVEN_WCS_EXTNAME)
        try:
            # the header blocks only; the planes are not read
            texts = read_header_texts(path, names)
            # a frame without a solution written into it, of plain cards: only the cards the
            # shape and the WCS need are parsed
            cards = CardImages.parse(texts["SCI"]) if texts and GIVEN_WCS_EXTNAME not in texts else None
            if cards is None:
                headers = (
                    read_headers(path, names)
                    if texts is None
                    else {k: fits.Header.fromstring(v) for k, v in texts.items()}
                )
                header = headers["SCI"]
        except (OSError, KeyError) as exc:
            raise BadInputError(f"cannot read the header of {Path(f['path']).name}: {exc}") from exc
        if cards is not None:
            sizes: dict[str, str] = {}
            for card in cards.cards:  # the first NAXISn card, as header["NAXISn"] reads it
                if card[:8] in ("NAXIS1  ", "NAXIS2  "):
                    sizes.setdefault(card[:8].rstrip(), card)
            shape = (
                int(fits.Card.fromstring(sizes["NAXIS2"]).value),
                int(fits.Card.fromstring(sizes["NAXIS1"]).value),
            )
            make_wcs = (lambda: header_wcs_images(cards)) if cfg.use_header_wcs else None
        else:
            shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
            # the WCS the frame came with, kept aside when a solution was written into SCI
            given = header_as_given(header, headers.get(GIVEN_WCS_EXTNAME))
            make_wcs = (lambda: header_wcs(given)) if cfg.use_header_wcs else None
        hint = None
        if f["ra_deg"] is not None and f["dec_deg"] is not None and f["pixel_scale_arcsec"]:
            hint = PointingHint(
                ra_deg=f["ra_deg"], dec_deg=f["dec_deg"], pixel_scale_arcsec=f["pixel_scale_arcsec"]
            )
        return LazyWcsFrame(sources=sources, shape=shape, hint=hint, name=f["name"], make_wcs=make_wcs)

    def run(self, unit: Unit) -> dict[str, Any]:
        from darkroom.astrom.field import blind_reference, failed_result, solve_field, source_counts

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
            failed = failed_result(f"not solved: {reason}", "relative")
            out.append(
                self._frame_result(p["frames"][k], None, failed, p, ref_image_id=None, catalog=None)[0]
            )
        if not frames:
            return {"frames": out}
        rows = [p["frames"][k] for k in usable]
        counts = source_counts(frames, flux_column=cfg.series.solve.flux_column)
        blind = blind_reference(frames, counts, [r.get("pixel_scale_arcsec") for r in rows], cfg)
        mjds = [r["mjd"] for r in rows]
        field = solve_field(
            frames,
            counts,
            settings=cfg,
            fwhms=[r.get("fwhm_pix") for r in rows],
            load_catalog=lambda attempt: self._load_catalog(frames, mjds, attempt),
            name=p["field"],
        )
        results, ref, catalog = field.results, field.reference, field.catalog
        ref_image_id = rows[ref]["image_id"]
        # each frame's files are handed to the writers as soon as its row is made: the writes
        # (hashing, fsync) overlap the rows and header edits of the frames after it
        with self._solution_writer() as write:
            for row, frame, result in zip(rows, frames, results, strict=True):
                item, files = self._frame_result(
                    row, frame, result, p, ref_image_id=ref_image_id, catalog=catalog
                )
                out.append(item)
                if files is not None:
                    write(item, files)
        if blind is not None:
            for item in out:
                if item["image_id"] == rows[blind[0]]["image_id"]:
                    item["astrom"]["blind_method"] = blind[1]
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

    def _frame_result(
        self,
        f: dict[str, Any],
        frame: FrameSources | None,
        result: SolveResult,
        p: dict[str, Any],
        *,
        ref_image_id: int | None,
        catalog: Table | None,
    ) -> tuple[dict[str, Any], _SolutionFiles | None]:
        """The frame's solution row, and the files that carry its WCS (written by
        :meth:`_solution_writer`, which fills in ``image_sha256``); None without a WCS."""
        from darkroom.astrom import pixel_scale_arcsec
        from darkroom.astrom.wcscards import solution_header, solution_products, transform_dict

        quality, reason = result.quality, result.reason
        if result.wcs is None and quality == "good":
            quality = "marginal"
            reason = reason or "no absolute WCS: aligned to the field's reference frame only"
        cards = wcs_path = centre = scale = files = None
        if result.wcs is not None and frame is not None:
            solution = solution_products(result, quality)  # the cards of solution_header(result, quality)
            cards = solution.cards
            out = self.product_path("catalogs", self.provenance_id, f"{raw_stem(f['path'])}.wcs")
            files = _SolutionFiles(
                out, solution.file_bytes, f["path"], solution.images, lambda: solution_header(result, quality)
            )
            wcs_path = self.relative(out)
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
            "wcs": cards,
            "wcs_path": wcs_path,
            "to_reference": transform_dict(result.to_reference),
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
        item = {"image_id": f["image_id"], "flag": quality, "astrom": jsonable(astrom), "image_sha256": None}
        return item, files

    @contextmanager
    def _solution_writer(self) -> Iterator[Callable[[dict[str, Any], _SolutionFiles], None]]:
        """A function ``write(item, files)`` that writes a frame's ``.wcs`` file and its solution
        into its calibrated image, and sets the item's ``image_sha256``; every write is done and
        durable when the block ends.

        The new header is made by the caller's thread (astropy's header code, reading the header
        blocks only) and the files are written by a few threads, which read the old data, hash
        (~5 ms of CPU for 9.4 MB: most of a frame's writing), write and fsync. A frame is handed
        over as soon as its row is made, so the writers work while the next frames' rows and
        headers are made. Each frame's files are its own; the bytes do not depend on the order.
        """
        from concurrent.futures import Future, ThreadPoolExecutor

        def write_files(files: _SolutionFiles, rewrite: HeaderRewrite | None) -> str | None:
            atomic_write_bytes(files.wcs_path, files.wcs_bytes)
            return None if rewrite is None else rewrite.write()

        pending: deque[tuple[dict[str, Any], Future]] = deque()
        with ThreadPoolExecutor(max_workers=_WRITE_THREADS, thread_name_prefix="darkroom-wcs") as pool:

            def write(item: dict[str, Any], files: _SolutionFiles) -> None:
                pending.append((item, pool.submit(write_files, files, self._wcs_into_image(files))))
                while len(pending) > 2 * _WRITE_THREADS:  # a few images in memory at a time
                    done, future = pending.popleft()
                    done["image_sha256"] = future.result()

            yield write
            for done, future in pending:
                done["image_sha256"] = future.result()

    def _wcs_into_image(self, files: _SolutionFiles) -> HeaderRewrite | None:
        """The calibrated image with the solution in its SCI header (old WCS cards replaced), so
        that any FITS viewer shows it (None when unreadable). Only the header blocks change: the
        planes are copied as bytes."""
        from darkroom.astrom.wcscards import (
            GIVEN_WCS_EXTNAME,
            given_wcs_bytes,
            given_wcs_header,
            replace_wcs_cards,
            replace_wcs_images,
        )

        path = self.root / files.image_path
        history = "darkroom.astrom: WCS from the astrometry stage"

        def edit(sci: CardImages, names: list[str]) -> list[bytes]:
            # keep the frame's own WCS, so that another provenance starts from what it was given
            given = [] if GIVEN_WCS_EXTNAME in names else [given_wcs_bytes(sci)]
            replace_wcs_images(sci, files.images, history=history)
            return given

        def given(sci: fits.Header, names: list[str]) -> list[fits.Header]:
            return [] if GIVEN_WCS_EXTNAME in names else [given_wcs_header(sci)]

        def update(sci: fits.Header) -> None:
            replace_wcs_cards(sci, files.header(), history=history)

        try:
            # one read of the file's header blocks: SCI's (the first HDU's when there is no SCI)
            # card images edited as astropy would, or, for a header of unusual cards, astropy's header
            planned = plan_card_rewrite(path, ("SCI", 0), edit)
            return planned or plan_header_rewrite(path, ("SCI", 0), update, append=given)
        except BadInputError as exc:
            log.warning("solution not written into %s: %s", path.name, exc.reason)
            return None

    def record(self, session: Session, unit: Unit, result: dict[str, Any]) -> None:
        # the images whose calibrated file got the solution, in one query
        rewritten = [item["image_id"] for item in result["frames"] if item.get("image_sha256")]
        images = {im.id: im for im in session.scalars(select(Image).where(Image.id.in_(rewritten)))}
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
                images[item["image_id"]].sha256 = item["image_sha256"]
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
