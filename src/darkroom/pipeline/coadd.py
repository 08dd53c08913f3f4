"""The coadd stage: one deep image per field, filter and night (or all nights).

Wiring only: the registry says which solved images exist; :mod:`darkroom.imaging` resamples,
combines, measures the depth; :mod:`darkroom.detect` extracts the coadd's sources.

``coadd`` (one unit per field, filter and night; optional: ``coadd.enabled`` in
darkroom.yaml, or ``darkroom coadd``)
    Images of the group with an astrometric solution (``astrom_solution.flag`` good or marginal, of
    the astrometry provenance this stage follows) and, with ``quality: good``, a good
    quality flag (after the lightcurves stage has marked cloudy frames) are coadded onto a
    common tangent plane (:func:`darkroom.imaging.coadd_images`). Products, under
    ``coadds/<provenance>/``: ``<field>_<filter>_<night>_<hash>.fits`` (SCI/MASK/VAR/WEIGHT/
    EXPMAP/NIMG; NCOMBINE, EXPTIME (total), MJD-OBS/MJD-MID/MJD-END, IMCMBnnn in the
    header), its source catalogue ``.cat.parquet`` (extraction with the night's
    ``astrometry.extract`` settings, RA/Dec through the coadd's solved WCS, ``mag`` from the
    coadd's aperture photometry and zero point) and a thumbnail ``.png``. Registry: a
    ``Coadd`` row (total exposure, time span, WCS cards, ``values``: ``zp`` and its source,
    ``mag_limit`` (``n_sigma`` empty-aperture limit), ``mag_limit_random`` (the same on the
    half-difference image: the part of the noise that averages down with the inputs),
    ``sigma_aperture``/``sigma_aperture_random``/``sigma_aperture_common`` (the coadd's
    aperture noise, its random part and the rest in quadrature: noise fixed on the detector
    or the sky, which N inputs do not average down), ``n_eff`` (``sum w / median w``: the
    coadd's depth over the median input's is ``1.25 log10(n_eff)`` for random noise and
    inverse-variance weights), ``inputs_mag_limit_median``
    (the inputs' limits measured the same way, in the coadd's photometric scale),
    ``fwhm_pix`` (median of the coadd's stars), ``inputs_fwhm_pix_median``,
    ``n_sources``, ``catalog``, ``thumbnail``) and one ``CoaddInput`` row per image with
    its weight.

    A coadd is an image like the night's frames: its sources are extracted, its WCS (the
    inputs' common grid) is checked and refined against the repository's reference catalogue
    as a frame's header WCS is (:func:`darkroom.astrom.solve_frame`, ``values["astrometry"]``;
    without a catalogue the grid is kept, 'marginal'), and its sources are measured and
    calibrated as the photometry stage calibrates a frame
    (:func:`darkroom.phot.frame.calibrate_frame`, ``values["photcal"]``): the zero point
    (mag for 1 adu/s of SCI / EXPTIME) fitted on its own stars against the catalogue; without
    a catalogue the reference (first) input's zero point (SCI / EXPTIME is its count rate),
    else instrumental magnitudes (zp 0).

Pixel convention: 0-based (sep); times MJD UTC.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.io import fits
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from darkroom.astrom.settings import SolveSettings
from darkroom.errors import BadInputError, SolveError
from darkroom.imaging.settings import CoaddSettings
from darkroom.io.atomic import atomic_path, sha256_file
from darkroom.maskbits import MaskBit
from darkroom.phot.settings import MeasureSettings
from darkroom.pipeline._products import jsonable, short_hash
from darkroom.pipeline.products import image_products
from darkroom.pipeline.stage import Stage, Unit
from darkroom.repo.models import Coadd, CoaddInput, Exposure

if TYPE_CHECKING:
    from astropy.table import Table

    from darkroom.imaging import ImagePlanes
    from darkroom.imaging.resample import TargetGrid

__all__ = ["CoaddStage", "load_input_planes"]

log = logging.getLogger(__name__)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "+-._" else "_" for c in text)[:60] or "unknown"


def load_input_planes(root: Path, item: dict[str, Any]) -> ImagePlanes:
    """A registered calibrated image with its solved WCS (the registry's, not the header's)."""
    from darkroom.astrom.wcscards import wcs_from_cards
    from darkroom.imaging import read_planes

    planes = read_planes(root / item["path"], name=item["name"])
    return planes.with_planes(
        planes.sci,
        planes.var,
        planes.mask,
        wcs=wcs_from_cards(item["wcs"]),
        exptime_s=item.get("exptime_s") or planes.exptime_s,
        mjd_mid=item.get("mjd_mid") or planes.mjd_mid,
        gain_e_per_adu=item.get("gain") or planes.gain_e_per_adu,
        filter=item.get("filter"),
    )


class CoaddStage(Stage):
    """Coadd the good images of each field, filter and night (see the module docstring)."""

    name = "coadd"
    family = "images"
    reads = ("extract", "quality", "astrometry", "photometry", "lightcurves")
    settings = ("coadd",)
    # the coadd is extracted, solved and calibrated as the night's frames are
    extra_inputs = ("reference_catalog", "astrometry_extract", "astrometry_solve", "photometry_measure")

    @classmethod
    def enabled(cls, config: Any) -> bool:
        return bool(config.coadd.enabled)

    def __init__(self, root: Path, config: CoaddSettings, **kwargs: Any) -> None:
        astrometry_provenance = kwargs.pop("astrometry_provenance", None)
        super().__init__(root, config, **kwargs)
        self.astrometry_provenance = astrometry_provenance or self.upstream_by_name.get("astrometry")
        # restrictions of `darkroom coadd --field/--filter/--nights` (not part of the provenance)
        self.fields: set[str] | None = None
        self.filters: set[str] | None = None
        self.nights: set[str] | None = None

    def restrict(
        self,
        *,
        fields: list[str] | None = None,
        filters: list[str] | None = None,
        nights: list[str] | None = None,
    ) -> CoaddStage:
        """Plan only these fields, filters and nights (None: all)."""
        self.fields = set(fields) if fields else None
        self.filters = set(filters) if filters else None
        self.nights = set(nights) if nights else None
        return self

    def _groups(self, session: Session) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
        cfg: CoaddSettings = self.config
        exptimes = dict(session.execute(select(Exposure.id, Exposure.exptime_s)).all())
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
        for im in image_products(session, self.lineage, need=("astrom",)):
            exptime = exptimes.get(im.exposure_id)
            if im.astrom_flag not in ("good", "marginal"):
                continue
            astrom = im.astrom
            if not astrom.get("wcs"):
                continue
            if self.astrometry_provenance and astrom.get("provenance_id") != self.astrometry_provenance:
                continue
            if cfg.quality == "good" and (im.quality_flag != "good" or im.poor):
                continue
            if (
                (self.fields and (im.field or "unknown") not in self.fields)
                or (self.filters and (im.filter or "none") not in self.filters)
                or (self.nights and (im.night or "unknown") not in self.nights)
            ):
                continue
            if cfg.per == "night":
                night = im.night or "unknown"
            else:  # one coadd over all nights (or over the nights asked for)
                night = "+".join(sorted(self.nights))[:200] if self.nights else "all"
            quality = im.quality
            groups[(im.field or "unknown", im.filter or "none", night)].append(
                {
                    "image_id": im.id,
                    "path": im.path,
                    "name": Path(im.path).name,
                    "wcs": astrom["wcs"],
                    "exptime_s": exptime,
                    "mjd_mid": im.mjd_mid,
                    "gain": (quality.get("calib") or {}).get("gain_e_per_adu"),
                    "fwhm_pix": quality.get("fwhm_pix"),
                    "zp": im.photcal.get("zp"),
                    "filter": im.filter,
                }
            )
        return groups

    def plan(self, session: Session) -> list[Unit]:
        cfg: CoaddSettings = self.config
        done = set(session.scalars(select(Coadd.key).where(Coadd.provenance_id == self.provenance_id)))
        units = []
        for (field, band, night), items in sorted(self._groups(session).items()):
            key = f"{field}:{band}:{night}"
            if key in done or len(items) < cfg.min_inputs:
                continue
            units.append(
                Unit(key=key, payload={"field": field, "filter": band, "night": night, "inputs": items})
            )
        return units

    def run(self, unit: Unit) -> dict[str, Any]:
        # the coadd stage is optional (off by default): its algorithms load when a coadd is made,
        # so `darkroom run` starts without reproject, scipy.interpolate or sep
        from darkroom.astrom.wcscards import replace_wcs_cards, wcs_from_cards
        from darkroom.detect import extract_frame
        from darkroom.imaging import coadd_images, empty_aperture_depth, thumbnail
        from darkroom.imaging.resample import grid_covering, pixel_scale_arcsec

        cfg: CoaddSettings = self.config
        p = unit.payload
        items = p["inputs"]
        wcs_shapes = []
        for item in items:
            w = wcs_from_cards(item["wcs"])
            shape = (int(w.pixel_shape[1]), int(w.pixel_shape[0])) if w.pixel_shape else None
            if shape is None:
                with fits.open(self.root / item["path"]) as hdul:
                    shape = tuple(hdul["SCI"].data.shape)
            wcs_shapes.append((w, shape))
        grid = grid_covering(wcs_shapes)
        fwhm_in = [f for f in (i.get("fwhm_pix") for i in items) if f]
        fwhm_med = float(np.median(fwhm_in)) if fwhm_in else 3.0
        radius = max(1.0, cfg.aperture_fwhm * fwhm_med)
        input_depth: dict[str, float] = {}

        # the inputs' depth on at most 12 of them (evenly spread): a median needs no more
        depth_names = {i["name"] for i in items[:: max(1, -(-len(items) // 12))]}

        def loader(item: dict[str, Any]):
            def load() -> ImagePlanes:
                planes = load_input_planes(self.root, item)
                if item["name"] not in depth_names:
                    return planes
                try:
                    input_depth[planes.name] = empty_aperture_depth(
                        planes.sci, planes.mask, radius_pix=radius, n_sigma=cfg.n_sigma
                    ).limit_flux
                except BadInputError as exc:
                    log.info("%s: no depth (%s)", planes.name, exc.reason)
                return planes

            return load

        result = coadd_images([loader(i) for i in items], grid, cfg.combine)
        stem = f"{_safe(p['field'])}_{_safe(p['filter'])}_{_safe(p['night'])}_{short_hash(unit.key)}"
        folder = self.product_path("coadds", self.provenance_id)
        path = folder / f"{stem}.fits"
        header = result.header
        header["FILTER"] = (p["filter"], "filter of the inputs")
        header["OBJECT"] = (p["field"], "field")
        header["NIGHT"] = (p["night"], "night (local date at the start) or 'all'")
        # extraction, astrometry and photometry on the coadd, as on any image of the night
        extract = self.inputs.get("astrometry_extract")
        extraction = extract_frame(
            result.sci,
            mask=result.mask,
            background_config=getattr(extract, "background", None),
            detect_config=getattr(extract, "detect", None),
            quality_config=getattr(extract, "quality", None),
            gain_e_per_adu=result.gain_e_per_adu,
            pixel_scale_arcsec=pixel_scale_arcsec(grid.wcs),
        )
        cat = extraction.catalog
        quality = extraction.quality
        fwhm_coadd = getattr(quality, "fwhm_pix", None) or fwhm_med
        reference, catalog_reason = self._reference_stars(grid, result.mjd_mid)
        astrom, wcs = self._solve(cat, grid, reference, fwhm_coadd)
        if astrom["replaced"]:
            replace_wcs_cards(header, astrom.pop("header"), history=f"darkroom.coadd: WCS {astrom['method']}")
        else:
            astrom.pop("header", None)
        header["ASTQUAL"] = (astrom["quality"], "astrometry of the coadd: good / marginal / failed")
        ra, dec = wcs.all_pix2world(np.asarray(cat["x"], float), np.asarray(cat["y"], float), 0)
        cat["ra_deg"], cat["dec_deg"] = ra % 360.0, dec
        # the zero point: the coadd's own against the reference catalogue when there is one, else the
        # reference (first) input's (SCI / EXPTIME is its count rate), else instrumental
        ref = items[0]
        ref_zp = float(ref["zp"]) if ref.get("zp") is not None else None
        photcal = self._photometry(
            result, cat, wcs, fwhm_coadd, reference, ref_zp, p["filter"], catalog_reason
        )
        zp_value = float(photcal["zp"]) if photcal.get("zp") is not None else 0.0
        if photcal.get("zp") is None:
            zp_source = "instrumental"
        elif photcal.get("n_used"):
            zp_source = f"catalog: {photcal.get('zp_source')}"
        else:
            zp_source = f"image {ref['image_id']}"
        header["MAGZP"] = (zp_value, "mag = MAGZP - 2.5 log10(flux / EXPTIME)")
        folder.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings(), atomic_path(path) as tmp:
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            result.to_hdus().writeto(tmp, output_verify="silentfix")
        cat.meta["zp"] = zp_value
        cat_path = folder / f"{stem}.cat.parquet"
        with atomic_path(cat_path) as tmp:
            cat.write(tmp, format="parquet", overwrite=True)
        depth = empty_aperture_depth(result.sci, result.mask, radius_pix=radius, n_sigma=cfg.n_sigma)
        exptime = result.exptime_s or 1.0
        mag_limit = depth.limit_mag(zp_value, exptime)
        # the random part of that depth (half-difference image: what averages down with N) and
        # the part common to all inputs (detector-fixed noise, fringes), in quadrature
        random_depth = None
        if result.noise is not None and np.isfinite(result.noise).any():
            try:
                random_depth = empty_aperture_depth(
                    np.nan_to_num(result.noise),
                    result.mask | np.where(np.isfinite(result.noise), 0, int(MaskBit.NO_DATA)),
                    radius_pix=radius,
                    n_sigma=cfg.n_sigma,
                )
            except BadInputError as exc:
                log.info("%s: no half-difference depth (%s)", unit.key, exc.reason)
        used_w = np.array([i.weight for i in result.inputs if i.weight > 0])
        # the inputs' limits in the coadd's photometric scale: scaled limit flux per reference exposure
        t_ref = float(header.get("EXPREF") or 1.0)
        input_limits = [
            zp_value - 2.5 * np.log10(input_depth[i.name] * i.scale / t_ref)
            for i in result.inputs
            if i.weight > 0 and i.name in input_depth and input_depth[i.name] > 0
        ]
        png = folder / f"{stem}.png"
        with atomic_path(png) as tmp:
            thumbnail(result.sci, tmp)
        return {
            "path": self.relative(path),
            "sha256": sha256_file(path),
            "n_inputs": int(sum(1 for i in result.inputs if i.weight > 0)),
            "exptime_s": result.exptime_s,
            "mjd": [result.mjd_start, result.mjd_end, result.mjd_mid],
            "wcs": {k: v for k, v in grid.header().items() if k not in ("COMMENT", "HISTORY", "")},
            "weights": {i.name: i.weight for i in result.inputs},
            "values": jsonable(
                {
                    "zp": zp_value,
                    "zp_source": zp_source,
                    "astrometry": astrom,
                    "photcal": {
                        k: photcal.get(k)
                        for k in (
                            "mag_system",
                            "zp",
                            "zp_err",
                            "colour_term",
                            "n_matched",
                            "n_used",
                            "rms_mag",
                            "apcorr_mag",
                            "reason",
                            "zp_flag",
                            "mag_limit",
                        )
                    },
                    "mag_limit": mag_limit,
                    "limit_n_sigma": cfg.n_sigma,
                    "limit_radius_pix": radius,
                    "sigma_aperture": depth.sigma_aperture,
                    "mag_limit_random": random_depth.limit_mag(zp_value, exptime) if random_depth else None,
                    "sigma_aperture_random": random_depth.sigma_aperture if random_depth else None,
                    "sigma_aperture_common": float(
                        np.sqrt(max(depth.sigma_aperture**2 - random_depth.sigma_aperture**2, 0.0))
                    )
                    if random_depth
                    else None,
                    # ivar weights: the coadd's variance is the median input's over sum(w) / w_median
                    "n_eff": float(used_w.sum() / np.median(used_w)) if used_w.size else None,
                    "inputs_mag_limit_median": float(np.median(input_limits)) if input_limits else None,
                    "fwhm_pix": getattr(quality, "fwhm_pix", None),
                    "inputs_fwhm_pix_median": fwhm_med if fwhm_in else None,
                    "n_sources": len(cat),
                    "catalog": self.relative(cat_path),
                    "thumbnail": self.relative(png),
                    "shape": list(grid.shape),
                    "inputs": [
                        {"name": i.name, "scale": i.scale, "scale_method": i.scale_method, "note": i.note}
                        for i in result.inputs
                    ],
                }
            ),
        }

    def _reference_stars(self, grid: TargetGrid, mjd: float | None) -> tuple[Table | None, str]:
        """The repository's reference catalogue over the coadd (None and why when there is none)."""
        from darkroom.phot.frame import frame_cone
        from darkroom.pipeline._shared import load_reference

        source = self.inputs.get("reference_catalog")
        if source is None:
            return None, "no reference catalog configured"
        ra, dec, radius = frame_cone(grid.wcs, grid.shape)
        return load_reference(self.root, source, ra=ra, dec=dec, radius=radius, mjd=mjd), ""

    def _solve(
        self, cat: Table, grid: TargetGrid, reference: Table | None, fwhm_pix: float
    ) -> tuple[dict[str, Any], Any]:
        """The coadd's WCS checked and refined against the reference stars, as a frame's header WCS
        is (:func:`darkroom.astrom.solve_frame`); the grid's WCS is kept when it cannot be."""
        from darkroom.astrom import solve_frame
        from darkroom.astrom.field import scaled_by_fwhm

        settings = self.inputs.get("astrometry_solve") or SolveSettings()
        solve_cfg = scaled_by_fwhm(settings, [fwhm_pix]).series.solve
        try:
            sol = solve_frame(cat, shape=grid.shape, catalog=reference, header_wcs=grid.wcs, config=solve_cfg)
        except SolveError as exc:
            return {
                "method": "grid",
                "quality": "marginal",
                "reason": f"the inputs' grid kept: {exc.reason}",
                "n_matched": 0,
                "rms_arcsec": None,
                "replaced": False,
            }, grid.wcs
        replaced = sol.ok and sol.wcs is not None and sol.method != "header"
        info = {
            "method": sol.method if replaced else "grid",
            "quality": sol.quality if sol.ok else "marginal",
            "reason": sol.reason
            if replaced
            else (sol.reason or "no reference catalog: the inputs' grid kept, unverified"),
            "n_matched": int(sol.n_matched),
            "rms_arcsec": float(sol.rms_arcsec) if np.isfinite(sol.rms_arcsec) else None,
            "replaced": bool(replaced),
        }
        if replaced:
            info["header"] = sol.to_header()
        return info, (sol.wcs if replaced else grid.wcs)

    def _photometry(
        self,
        result: Any,
        cat: Table,
        wcs: Any,
        fwhm_pix: float,
        reference: Table | None,
        ref_zp: float | None,
        band: str,
        reason: str,
    ) -> dict[str, Any]:
        """Aperture photometry of the coadd's sources and its zero point, as the photometry stage
        calibrates a frame (:func:`darkroom.phot.frame.calibrate_frame`); adds ``mag``, ``mag_err``
        to ``cat`` (row for row)."""
        from darkroom.phot import aperture_photometry, pixel_to_sky
        from darkroom.phot.frame import calibrate_frame
        from darkroom.pipeline._shared import photometric_reference

        measure: MeasureSettings = self.inputs.get("photometry_measure") or MeasureSettings()
        exptime = result.exptime_s or 1.0
        x, y = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
        phot = aperture_photometry(
            result.sci,
            result.mask,
            result.var,
            x,
            y,
            fwhm_pix=float(fwhm_pix),
            config=measure.aperture,
            neighbour_x=x,
            neighbour_y=y,
            exptime_s=exptime,
        )
        phot["ra"], phot["dec"] = pixel_to_sky(wcs, x, y) if len(phot) else (np.zeros(0), np.zeros(0))
        phot_ref, zp_source = None, ""
        if reference is not None and len(reference) and len(phot):
            phot_ref, zp_source = photometric_reference(reference, measure, band if band != "none" else None)
            if phot_ref is None:
                reason = zp_source
        unit_zp = None
        if phot_ref is None and ref_zp is not None:
            # the reference input's zero point per adu/s, as the zero point of a pixel sum of 1
            unit_zp = ref_zp + 2.5 * np.log10(exptime)
            zp_source = "the reference input's zero point"
        photcal = calibrate_frame(
            phot,
            phot_ref,
            settings=measure,
            unit_zero_point_mag=unit_zp,
            exptime_s=exptime,
            gain_e_per_adu=result.gain_e_per_adu,
            zp_source=zp_source,
            reason=reason,
        )
        cat["mag"] = np.asarray(phot["mag"], float)
        cat["mag_err"] = np.asarray(phot["mag_err"], float)
        return photcal

    def record(self, session: Session, unit: Unit, result: dict[str, Any]) -> None:
        p = unit.payload
        start, end, mid = result["mjd"]
        coadd = Coadd(
            provenance_id=self.provenance_id,
            key=unit.key,
            field=p["field"],
            filter=p["filter"],
            night=p["night"]
            if len(p["night"]) <= 10 and "+" not in p["night"] and p["night"] != "all"
            else None,
            path=result["path"],
            sha256=result["sha256"],
            n_inputs=result["n_inputs"],
            exptime_s=result["exptime_s"],
            mjd_start=start,
            mjd_end=end,
            mjd_mid=mid,
            wcs=jsonable(result["wcs"]),
            values=result["values"],
        )
        by_name = {i["name"]: i["image_id"] for i in p["inputs"]}
        for name, weight in result["weights"].items():
            if name in by_name and weight > 0:
                coadd.inputs.append(CoaddInput(image_id=by_name[name], weight=float(weight)))
        session.add(coadd)

    def forget_products(self, session: Session) -> None:
        ids = list(session.scalars(select(Coadd.id).where(Coadd.provenance_id == self.provenance_id)))
        if ids:
            session.execute(delete(CoaddInput).where(CoaddInput.coadd_id.in_(ids)))
            session.execute(delete(Coadd).where(Coadd.id.in_(ids)))
