"""The photometry stage: every source of the field measured on every frame, and the zero point.

Wiring only: :mod:`darkroom.phot` measures (aperture, forced PSF) and calibrates.

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
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from darkroom.catalogs import (
    read_table,
)
from darkroom.detect import estimate_background
from darkroom.io.calibrated import read_calibrated
from darkroom.phot import (
    PhotFlag,
    aperture_photometry,
    calibrate_photometry,
    calibrate_with_unit,
    limiting_magnitude,
    match_xy,
    pixel_to_sky,
    psf_photometry,
)
from darkroom.phot.apcorr import aperture_correction, psf_minus_aperture
from darkroom.phot.blend import blend_flags
from darkroom.phot.forced import predict_positions
from darkroom.phot.psfmodel import disc_mask, moffat_psf_model, psf_noise_area
from darkroom.phot.settings import MeasureSettings
from darkroom.pipeline._products import jsonable, raw_stem
from darkroom.pipeline._shared import affine_from_dict, load_reference, parquet_meta, photometric_reference
from darkroom.pipeline.astrometry import wcs_from_astrom
from darkroom.pipeline.products import image_products
from darkroom.pipeline.stage import Stage, Unit, quarantine_exposure
from darkroom.repo.bulk import replace_measurements_for_images
from darkroom.repo.models import (
    Measurement,
    PhotCal,
    Source,
)
from darkroom.repo.store import atomic_path

__all__ = ["MeasureSettings", "PhotometryStage"]

log = logging.getLogger(__name__)


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

    def _positions(self, p: dict[str, Any], shape: tuple[int, int]):
        """Predicted 0-based positions of the field's sources on this frame, and which are on it."""
        wcs = wcs_from_astrom({"wcs": p["wcs"]}) if p.get("wcs") else None
        x, y, on = predict_positions(
            p["sources"],
            coords=p["coords"],
            wcs=wcs,
            to_reference=affine_from_dict(p.get("to_reference")),
            shape=shape,
        )
        return x, y, on, wcs

    def run(self, unit: Unit) -> dict[str, Any]:
        cfg: MeasureSettings = self.config
        p = unit.payload
        path = self.root / p["path"]
        image = read_calibrated(path)
        sci, mask, var = image.sci, image.mask, image.var
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
        blend_flags(phot, det_x[finite], det_y[finite], config=cfg.aperture)
        phot["source_id"] = source_id
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
                catalog_meta=parquet_meta(self.root / p["catalog_path"]) if p.get("catalog_path") else {},
            )
        photcal = self._calibrate(phot, p, wcs, sci.shape)
        photcal["method"] = cfg.method
        photcal.update(psf_info)
        out = self.product_path("catalogs", self.provenance_id, f"{raw_stem(p['path'])}.phot.parquet")
        phot.meta["photcal"] = jsonable(photcal)
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
            model = moffat_psf_model(fwhm_pix, beta, half_size_pix=math.ceil(4.0 * fwhm_pix) + 1)
            info = {"psf_model": "moffat", "psf_beta": beta}
        elif cfg.psf_moffat:
            log.warning("no Moffat fit in the frame's catalog: PSF model %r instead", cfg.psf.model)
        x = np.asarray(phot["x"], float)
        y = np.asarray(phot["y"], float)
        background = None
        if cfg.psf_background_mask_fwhm > 0:
            bad = disc_mask(sci.shape, x, y, radius_pix=cfg.psf_background_mask_fwhm * fwhm_pix)
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

    def _calibrate(self, phot: Table, p: dict[str, Any], wcs, shape: tuple[int, int]) -> dict[str, Any]:
        """Zero point (with a catalog) or instrumental magnitudes; adds mag, mag_err to ``phot``."""
        cfg: MeasureSettings = self.config
        psf = cfg.method == "psf"
        apcorr, apcorr_err, n_apcorr = (0.0, None, 0)
        if cfg.do_aperture_correction:
            apcorr, apcorr_err, n_apcorr = aperture_correction(phot, min_snr=self.config.apcorr_min_snr)
        extra: dict[str, Any] = {}
        if psf:
            # PSF fluxes are total: the aperture correction describes the aperture columns only
            extra["aperture_apcorr_mag"] = apcorr
            extra["psf_minus_aperture_mag"], extra["n_psf_aperture"] = psf_minus_aperture(
                phot, min_snr=self.config.apcorr_min_snr
            )
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
            cat = load_reference(
                self.root, source, ra=float(ra0[0]), dec=float(dec0[0]), radius=radius, mjd=p.get("mjd")
            )
            if len(cat):
                reference, zp_source = photometric_reference(cat, cfg, p.get("filter") or None)
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
                noise_area = psf_noise_area(phot, sky_rms)
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
        pc = {k: v for k, v in result["photcal"].items() if k != "provenance_id"}
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
