"""The calibrate stage: each light frame calibrated with the masters of its group into SCI/MASK/VAR.

Wiring only: :func:`darkroom.calib.process.calibrate_frame` does the work;
:mod:`darkroom.io.calibrated` writes the file.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from darkroom.calib.process import adopt_calibrated, calibrate_frame, cut_masters_to_subframe, trimmed_shape
from darkroom.calib.settings import CalibSettings
from darkroom.errors import BadInputError, MissingCalibrationError
from darkroom.instruments.metadata import FrameMetadata
from darkroom.io.calibrated import CalibratedImage, encode_calibrated, write_encoded
from darkroom.io.rawfits import read_raw
from darkroom.pipeline._products import jsonable, raw_stem
from darkroom.pipeline.calibration import (
    GoingOn,
    exposure_meta,
    master_records,
    read_bpm,
    read_master,
    select_master_for,
)
from darkroom.pipeline.deferred import DeferredWrites
from darkroom.pipeline.stage import Stage, Unit, quarantine_exposure
from darkroom.repo.models import Calib, Exposure, Image
from darkroom.robust import median

__all__ = ["CalibrateStage"]

log = logging.getLogger(__name__)


class CalibrateStage(DeferredWrites, Stage):
    """Calibrate each light frame: overscan/trim, bias, dark, flat, bad pixels, cosmic rays,
    variance; write SCI/MASK/VAR."""

    name = "calibrate"
    reads_raw_files = True
    reads = ("master_bias", "master_dark", "master_flat", "sky_flat", "bad_pixels")
    settings = ("calib.grouping", "calib.calibration", "calib.allow_outside_window")

    def plan(self, session: Session) -> list[Unit]:
        cfg: CalibSettings = self.config
        going_on = GoingOn(session, cfg)
        done = set(
            session.scalars(select(Image.exposure_id).where(Image.provenance_id == self.provenance_id))
        )
        records = {k: master_records(session, k, self.upstream) for k in ("bias", "dark", "flat")}
        bpms = session.scalars(
            select(Calib).where(Calib.kind == "bpm", Calib.provenance_id.in_(self.upstream))
        ).all()
        units = []
        for e in session.scalars(
            select(Exposure)
            .where(Exposure.state == "ok", Exposure.frame_type == "light")
            .order_by(Exposure.mjd_mid, Exposure.id)
        ):
            if e.id in done:
                continue
            meta = exposure_meta(e)
            payload: dict[str, Any] = {"path": e.path, "meta": e.meta}
            if meta.precalibrated:  # survey products: the pixels are kept, no master is asked for
                payload["precalibrated"] = True
                units.append(Unit(key=f"exp:{e.id}", payload={**payload, "exposure_id": e.id}))
                continue
            errors = []
            for kind in ("bias", "dark", "flat"):
                try:
                    chosen = select_master_for(meta, kind, records[kind], cfg)
                    payload[kind] = (chosen.path, chosen.sha256)
                    if kind == "flat" and getattr(chosen, "origin", None):
                        payload["flat_origin"] = chosen.origin  # 'sky': a sky flat of the lights
                except MissingCalibrationError as err:
                    payload[kind] = None
                    if going_on.may_skip(kind, e.night):
                        payload.setdefault("skipped_masters", []).append(kind)
                    else:
                        errors.append(
                            f"{err.reason} (set calib.calibration.require.{kind}=false to go on without)"
                        )
            bpm = _nearest_bpm(bpms, meta)
            payload["bpm"] = (bpm.path, bpm.sha256) if bpm is not None else None
            if errors:
                payload["error"] = "; ".join(errors)
            payload["exposure_id"] = e.id
            units.append(Unit(key=f"exp:{e.id}", payload=payload))
        going_on.warn()
        return units

    def run(self, unit: Unit) -> dict[str, Any]:
        cfg: CalibSettings = self.config
        p = unit.payload
        if "error" in p:
            raise MissingCalibrationError(p["error"])
        meta = FrameMetadata.model_validate(p["meta"])
        raw = read_raw(p["path"])
        if p.get("precalibrated"):
            return self._write(unit, p, adopt_calibrated(raw.data, meta, header=raw.header))
        masters = {
            k: read_master(self.root / p[k][0], p[k][1]) if p.get(k) else None
            for k in ("bias", "dark", "flat")
        }
        bpm = read_bpm(str(self.root / p["bpm"][0]), p["bpm"][1]) if p.get("bpm") else None
        if meta.subframe_x is not None or meta.subframe_y is not None:
            # a subframe read-out: the matching cut of the full-frame masters
            shape = trimmed_shape(raw.data.shape, meta, config=cfg.calibration)
            masters["bias"], masters["dark"], masters["flat"], bpm = cut_masters_to_subframe(
                meta, shape, bias=masters["bias"], dark=masters["dark"], flat=masters["flat"], bad_pixels=bpm
            )
        if bpm is not None and masters["bias"] is not None and bpm.shape != masters["bias"].shape:
            raise BadInputError(f"bad-pixel mask {bpm.shape} does not match the frame")
        result = calibrate_frame(
            raw.data,
            meta,
            bias=masters["bias"],
            dark=masters["dark"],
            flat=masters["flat"],
            bad_pixels=bpm,
            header=raw.header,
            config=cfg.calibration,
        )
        return self._write(unit, p, result)

    def _write(self, unit: Unit, p: dict[str, Any], result) -> dict[str, Any]:
        stem = raw_stem(p["path"])
        path = self.product_path("images", self.provenance_id, f"{unit.key.replace(':', '')}_{stem}.fits")
        image = CalibratedImage(sci=result.sci, header=result.header, mask=result.mask, var=result.var)
        # The file is written (and fsynced: ~20-40 ms for a 1k x 1k frame) in a thread while the
        # figures below are computed and, with deferred writes (the runner's own process), while
        # the next frame is calibrated: the runner settles the SHA-256 before recording the unit.
        # Encoded here: astropy warns while formatting cards, and warnings are process-wide.
        encoded = encode_calibrated(image)
        sha256: str | Future
        if encoded.headers is None:  # astropy's own writer (it warns too): in this thread
            sha256 = write_encoded(path, encoded)
        else:
            sha256 = self.write_in_thread(write_encoded, path, encoded, wait=False)
        finite = np.isfinite(result.sci)
        median_adu = (
            float(median(result.sci, where=None if finite.all() else finite)) if finite.any() else None
        )
        if isinstance(sha256, Future) and not self.deferring:
            sha256 = sha256.result()
        return {
            "path": self.relative(path),
            "sha256": sha256,
            "calib": jsonable(
                {
                    "gain_e_per_adu": result.gain_e_per_adu,
                    "read_noise_e": result.read_noise_e,
                    "saturation_adu": result.saturation_adu,
                    "n_cosmic_pixels": result.n_cosmic_pixels,
                    "n_bad_pixels": result.n_bad_pixels,
                    "n_saturated": result.n_saturated,
                    "median_adu": median_adu,
                    "masters": {k: (p[k][0] if p.get(k) else None) for k in ("bias", "dark", "flat", "bpm")},
                    "skipped_masters": p.get("skipped_masters", []),
                    "flat_origin": p.get("flat_origin"),
                    "noise_model": result.noise_model,
                    "steps": list(result.steps),
                    "precalibrated": bool(p.get("precalibrated")),
                    "unit_zero_point_mag": (p.get("meta") or {}).get("unit_zero_point_mag"),
                }
            ),
        }

    def quarantine(self, session: Session, unit: Unit, reason: str) -> None:
        quarantine_exposure(session, unit.payload.get("exposure_id"), f"{self.name}: {reason}")

    def forget_products(self, session: Session) -> None:
        """Delete this provenance's calibrated images (rows and files)."""
        paths = list(session.scalars(select(Image.path).where(Image.provenance_id == self.provenance_id)))
        session.execute(delete(Image).where(Image.provenance_id == self.provenance_id))
        self.remove_files(paths)

    def record(self, session: Session, unit: Unit, result: dict[str, Any]) -> None:
        exp = session.get(Exposure, unit.payload["exposure_id"])
        session.add(
            Image(
                exposure_id=exp.id,
                provenance_id=self.provenance_id,
                path=result["path"],
                sha256=result["sha256"],
                filter=exp.filter,
                time_mid_utc=exp.time_mid_utc,
                mjd_mid=exp.mjd_mid,
                night=exp.night,
                field=exp.object,
                calib=result["calib"],
            )
        )


def _bpm_fits(b: Calib, meta: FrameMetadata) -> bool:
    """The mask has the frame's size, or covers the frame's subframe read-out."""
    n1, n2 = b.stats.get("record", {}).get("naxis1"), b.stats.get("record", {}).get("naxis2")
    if (n1, n2) == (meta.naxis1, meta.naxis2):
        return True
    if (meta.subframe_x is None and meta.subframe_y is None) or not (n1 and n2):
        return False
    return (meta.subframe_x or 0) + meta.naxis1 <= n1 and (meta.subframe_y or 0) + meta.naxis2 <= n2


def _nearest_bpm(bpms: list[Calib], meta: FrameMetadata) -> Calib | None:
    same = [
        b
        for b in bpms
        if b.instrument == (meta.instrument or "")
        and (b.binning_x, b.binning_y) == (meta.binning_x, meta.binning_y)
        and _bpm_fits(b, meta)
    ]
    if not same:
        return None
    if meta.night is None:
        return same[-1]
    return min(same, key=lambda b: (b.night != meta.night, abs(_night_ord(b.night) - _night_ord(meta.night))))


def _night_ord(night: str | None) -> int:
    if not night:
        return 0
    y, m, d = (int(x) for x in night.split("-"))
    return y * 372 + m * 31 + d
