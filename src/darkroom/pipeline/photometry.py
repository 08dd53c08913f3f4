"""The photometry stage: every source of the field measured on every frame, and the zero point.

Wiring only: :mod:`darkroom.phot` predicts and recentres the positions
(:mod:`darkroom.phot.forced`), measures (aperture, PSF at fixed positions) and calibrates
(:mod:`darkroom.phot.frame`).

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
    never duplicates) and one ``photcal`` row per image (band, zp, zp_err, colour term, limit,
    stars used, flag = mag_system) whose ``values`` hold: ``method``, ``mag_system``
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

Pixel convention: 0-based pixel centres (sep); shapes ``(ny, nx)``; fluxes in the SCI
unit (adu); times MJD UTC at mid-exposure.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from darkroom.io.calibrated import read_calibrated
from darkroom.io.fitsplanes import read_planes
from darkroom.io.tables import parquet_bytes, read_parquet_columns, read_parquet_meta
from darkroom.phot.settings import MeasureSettings
from darkroom.pipeline._products import jsonable, raw_stem
from darkroom.pipeline._shared import affine_from_dict, load_reference, photometric_reference
from darkroom.pipeline.associate import FrameWcs
from darkroom.pipeline.deferred import DeferredWrites
from darkroom.pipeline.products import image_products
from darkroom.pipeline.stage import Stage, Unit, quarantine_exposure
from darkroom.repo.bulk import replace_measurements_for_images
from darkroom.repo.models import (
    Measurement,
    PhotCal,
    Source,
)

if TYPE_CHECKING:
    from astropy.table import Table

# This module is imported for every `darkroom run` (pipeline.stages lists every stage); the
# photometry (sep, scipy, astropy.wcs, astropy.nddata via darkroom.phot) loads when a unit runs.

__all__ = ["MeasureSettings", "PhotometryStage"]

log = logging.getLogger(__name__)


class PhotometryStage(DeferredWrites, Stage):
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
        done = set(
            session.scalars(select(PhotCal.image_id).where(PhotCal.provenance_id == self.provenance_id))
        )
        items = [
            (im, im.meta)
            for im in image_products(session, self.upstream, need=("association", "astrom"))
            if im.id not in done
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
                calib = im.calib
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

    def _frame_wcs(self, cards: dict[str, Any]):
        """The frame's WCS, as :func:`~darkroom.pipeline.astrometry.wcs_from_astrom` builds it
        (to the last bit), through the stage's :class:`~darkroom.pipeline.associate.FrameWcs`: a
        night's solutions share a layout, and a copy of the first with the frame's numbers set
        costs ~0.3 ms instead of ~1.4 ms of astropy's header, text and parse per frame."""
        frame_wcs = getattr(self, "_frame_wcs_cache", None)
        if frame_wcs is None:
            frame_wcs = self._frame_wcs_cache = FrameWcs()
        return frame_wcs(cards)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_frame_wcs_cache", None)  # a worker builds its own
        return state

    def _positions(self, p: dict[str, Any], shape: tuple[int, int]):
        """Predicted 0-based positions of the field's sources on this frame, and which are on it."""
        from darkroom.phot.forced import predict_positions

        wcs = self._frame_wcs(p["wcs"]) if p.get("wcs") else None
        x, y, on = predict_positions(
            p["sources"],
            coords=p["coords"],
            wcs=wcs,
            to_reference=affine_from_dict(p.get("to_reference")),
            shape=shape,
        )
        return x, y, on, wcs

    def _planes(self, path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """SCI, MASK (None without one) and VAR (None without one) of the calibrated image. For
        aperture photometry, views of the file memory-mapped: the photometry converts the
        pixels around its sources only (~1 ms instead of ~3 ms for three 1k x 1k planes);
        other files, and PSF photometry, through :func:`~darkroom.io.calibrated.read_calibrated`."""
        if self.config.method == "aperture":
            try:
                found = read_planes(path, ("SCI", "MASK", "VAR"), mapped=True)
            except (OSError, ValueError):
                found = None  # read_calibrated gives the reason
            if found is not None and "SCI" in found[0]:
                planes = found[0]
                return planes["SCI"], planes.get("MASK"), planes.get("VAR")
        image = read_calibrated(path, header=False)  # the WCS comes from the astrometry's row
        return image.sci, image.mask, image.var

    def run(self, unit: Unit) -> dict[str, Any]:
        from darkroom.phot import aperture_photometry, pixel_to_sky
        from darkroom.phot.blend import blend_flags
        from darkroom.phot.forced import recentre_on_detections
        from darkroom.phot.frame import psf_fluxes_at_apertures

        cfg: MeasureSettings = self.config
        p = unit.payload
        path = self.root / p["path"]
        sci, mask, var = self._planes(path)
        fwhm = p.get("fwhm_pix")
        if not (fwhm and np.isfinite(fwhm) and fwhm > 0):
            fwhm = cfg.default_fwhm_pix
        x, y, on, wcs = self._positions(p, sci.shape)
        idx = np.flatnonzero(on)
        x, y = x[idx], y[idx]
        source_id = p["sources"]["source_id"][idx]
        n_det, det = (
            read_parquet_columns(self.root / p["catalog_path"], ("x", "y", "sharp"))
            if p.get("catalog_path")
            else (0, {})
        )
        det_x = np.asarray(det["x"], float) if n_det else np.zeros(0)
        det_y = np.asarray(det["y"], float) if n_det else np.zeros(0)
        good_det = np.isfinite(det_x) & np.isfinite(det_y)
        if n_det and "sharp" in det:
            good_det &= ~np.asarray(det["sharp"], bool)
        gi = np.flatnonzero(good_det)
        tied = recentre_on_detections(
            x,
            y,
            det_x[gi],
            det_y[gi],
            radius_pix=cfg.recentre_radius_fwhm * fwhm,
            recentre=cfg.do_recentre,
        )
        x, y, forced, n_shift = tied.x, tied.y, tied.forced, tied.n_offset_stars
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
        blend_flags(phot, det_x[finite], det_y[finite], config=cfg.aperture)
        phot["source_id"] = source_id
        if wcs is not None:
            phot["ra"], phot["dec"] = pixel_to_sky(wcs, x, y) if len(phot) else (np.zeros(0), np.zeros(0))
        else:
            phot["ra"] = phot["dec"] = np.full(len(phot), np.nan)
        psf_info: dict[str, Any] = {}
        if cfg.method == "psf" and len(phot):
            psf_fit = read_parquet_meta(self.root / p["catalog_path"]) if p.get("catalog_path") else {}
            psf_info = psf_fluxes_at_apertures(
                phot,
                sci,
                mask,
                var,
                fwhm_pix=float(fwhm),
                settings=cfg,
                exptime_s=p.get("exptime_s"),
                moffat_fwhm_pix=psf_fit.get("psf_fwhm_pix"),
                moffat_beta=psf_fit.get("psf_beta"),
            )
        photcal = self._calibrate(phot, p, wcs, sci.shape)
        photcal["method"] = cfg.method
        photcal.update(psf_info)
        out = self.product_path("catalogs", self.provenance_id, f"{raw_stem(p['path'])}.phot.parquet")
        phot.meta["photcal"] = jsonable(photcal)
        # encoded here, written and fsynced (~5-9 ms of waiting a frame) while the next frame is
        # measured (deferred writes)
        sha256 = self.write_bytes_in_thread(out, parquet_bytes(phot))
        photcal["path"] = self.relative(out)
        photcal["n_measured"] = len(phot)
        photcal["n_forced"] = int(np.count_nonzero(phot["forced"]))
        photcal["n_offset_stars"] = n_shift
        return {
            "image_id": p["image_id"],
            "columns": {
                "source_id": np.asarray(phot["source_id"], np.int64),
                "image_id": np.full(len(phot), p["image_id"], np.int64),
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
            "sha256": sha256,
        }

    def _calibrate(self, phot: Table, p: dict[str, Any], wcs, shape: tuple[int, int]) -> dict[str, Any]:
        """The frame's reference stars (the repository's catalogue in a cone over the frame), then
        :func:`~darkroom.phot.frame.calibrate_frame`; adds mag, mag_err to ``phot``."""
        from darkroom.phot.frame import calibrate_frame, frame_cone

        cfg: MeasureSettings = self.config
        reference, zp_source, reason = None, "", ""
        source = cfg.reference_catalog
        if source is not None and wcs is not None and len(phot):
            ra, dec, radius = frame_cone(wcs, shape)
            cat = load_reference(self.root, source, ra=ra, dec=dec, radius=radius, mjd=p.get("mjd"))
            if len(cat):
                reference, zp_source = photometric_reference(cat, cfg, p.get("filter") or None)
                if reference is None:
                    reason = zp_source
        elif source is not None and p.get("unit_zero_point_mag") is None:
            reason = "no WCS: the reference catalog cannot be matched"
        photcal = calibrate_frame(
            phot,
            reference,
            settings=cfg,
            unit_zero_point_mag=p.get("unit_zero_point_mag"),
            exptime_s=p.get("exptime_s"),
            gain_e_per_adu=p.get("gain_e_per_adu"),
            zp_source=zp_source,
            reason=reason,
        )
        if photcal["zp_flag"]:
            log.warning("image %s: %s", p.get("image_id"), photcal["zp_flag"])
        return {"provenance_id": self.provenance_id, **photcal}

    def quarantine(self, session: Session, unit: Unit, reason: str) -> None:
        quarantine_exposure(session, unit.payload.get("exposure_id"), f"{self.name}: {reason}")

    def record(self, session: Session, unit: Unit, result: dict[str, Any]) -> None:
        image_id = result["image_id"]
        replace_measurements_for_images(
            session, [image_id], result["columns"], provenance_id=self.provenance_id
        )
        pc = {k: v for k, v in result["photcal"].items() if k != "provenance_id"}
        pc["sha256"] = result.get("sha256")  # of the file at pc["path"]
        session.add(
            PhotCal(
                image_id=image_id,
                provenance_id=self.provenance_id,
                band=unit.payload.get("filter") or None,
                ref_column=self.config.ref_mag_column if pc.get("zp") is not None else None,
                zp=pc.get("zp"),
                zp_err=pc.get("zp_err"),
                colour_term=pc.get("colour_term"),
                mag_limit=pc.get("mag_limit"),
                n_stars=pc.get("n_used"),
                flag=pc.get("mag_system"),
                reason=pc.get("reason"),
                values=pc,
            )
        )

    def forget_products(self, session: Session) -> None:
        """Delete this provenance's measurements, photometric calibrations and per-image files."""
        rows = session.scalars(select(PhotCal).where(PhotCal.provenance_id == self.provenance_id)).all()
        paths = [(r.values or {}).get("path") for r in rows]
        session.execute(delete(Measurement).where(Measurement.provenance_id == self.provenance_id))
        session.execute(delete(PhotCal).where(PhotCal.provenance_id == self.provenance_id))
        self.remove_files(paths)
