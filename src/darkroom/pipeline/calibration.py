"""Calibration stages: master bias, dark and flat, the bad-pixel mask, calibrated frames.

Wiring only: the registry says which frames exist, :mod:`darkroom.calib` groups
them, combines masters and calibrates; these stages read the files, call it, write
the products atomically under deterministic names and record the rows.

Gain and read noise: the master bias records the read noise measured on its input
pairs and the master flat the gain measured on two of its flats (photon transfer,
two-frame form); both are stored with the master (per instrument and night) and
used by calibration whenever the header has no GAIN / RDNOISE.
"""

from __future__ import annotations

import logging
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from astropy.io import fits
from astropy.time import Time
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from darkroom.calib.badpix import (
    BadPixelMask,
    BadPixelReason,
    build_bad_pixel_mask,
    read_user_badpixels,
)
from darkroom.calib.grouping import (
    MasterRecord,
    describe_key,
    group_calibration_frames,
    select_master,
)
from darkroom.calib.masters import (
    MasterFrame,
    compare_masters,
    make_master_bias,
    make_master_dark,
    make_master_flat,
    master_from_hdus,
    master_to_hdus,
)
from darkroom.calib.process import adopt_calibrated, calibrate_frame, cut_masters_to_subframe, prepare_raw
from darkroom.calib.settings import CalibSettings
from darkroom.errors import BadInputError, MissingCalibrationError
from darkroom.instruments.metadata import FrameMetadata
from darkroom.io.rawfits import read_raw
from darkroom.pipeline._products import jsonable, raw_stem, short_hash
from darkroom.pipeline.stage import Stage, Unit, quarantine_exposure
from darkroom.repo.models import Calib, CalibInput, Exposure, Image
from darkroom.repo.store import atomic_path, sha256_file

__all__ = [
    "BadPixelStage",
    "CalibSettings",
    "CalibrateStage",
    "MasterBiasStage",
    "MasterDarkStage",
    "MasterFlatStage",
    "MasterStage",
    "read_master",
]

log = logging.getLogger(__name__)


def _write_fits(hdul: fits.HDUList, path: Path) -> None:
    """Write HDUs atomically; long history/comment cards are truncated quietly."""
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        hdul.writeto(tmp)


def _meta(row: Exposure) -> FrameMetadata:
    return FrameMetadata.model_validate(row.meta)


@lru_cache(maxsize=16)
def _read_master_cached(path: str, sha256: str) -> MasterFrame:
    with fits.open(path, memmap=False) as hdul:
        return master_from_hdus(hdul, name=Path(path).name)


def read_master(path: Path | str, sha256: str = "") -> MasterFrame:
    """A stored master (cached per worker by path and checksum)."""
    return _read_master_cached(str(path), sha256)


@lru_cache(maxsize=8)
def _read_bpm_cached(path: str, sha256: str) -> BadPixelMask:
    with fits.open(path, memmap=False) as hdul:
        reasons = np.asarray(hdul[0].data, dtype=np.uint8)
        h = hdul[0].header
    cols = tuple(int(c) for c in str(h.get("BADCOLS", "")).split(",") if c.strip())
    rows = tuple(int(c) for c in str(h.get("BADROWS", "")).split(",") if c.strip())
    return BadPixelMask(reasons, cols, rows, Path(path).name)


def _master_records(session: Session, kind: str, provenance_ids: tuple[str, ...]) -> list[MasterRecord]:
    rows = session.scalars(
        select(Calib).where(Calib.kind == kind, Calib.provenance_id.in_(provenance_ids)).order_by(Calib.id)
    ).all()
    out = []
    for r in rows:
        rec = dict(r.stats.get("record", {}))
        rec.update(name=str(r.id), path=r.path, sha256=r.sha256 or "")
        out.append(MasterRecord.model_validate(rec))
    return out


class _GoingOn:
    """``calib.calibration.require`` per kind and night: ``auto`` goes on without a kind of
    master on a night that has no frames of that kind, with one warning per night and kind."""

    def __init__(self, session: Session, settings: CalibSettings) -> None:
        self.require = settings.calibration.require
        rows = session.execute(
            select(Exposure.frame_type, Exposure.night).where(Exposure.state == "ok").distinct()
        ).all()
        self.nights_with: dict[str, set[str | None]] = {}
        for frame_type, night in rows:
            self.nights_with.setdefault(frame_type, set()).add(night)
        self.skipped: set[tuple[str | None, str]] = set()

    def may_skip(self, kind: str, night: str | None) -> bool:
        mode = getattr(self.require, kind)
        if mode is False:
            return True
        if mode == "auto" and night not in self.nights_with.get(kind, set()):
            self.skipped.add((night, kind))
            return True
        return False

    def warn(self) -> None:
        for night, kind in sorted(self.skipped, key=lambda x: (x[0] or "", x[1])):
            log.warning(
                "night %s has no %s frames: calibrating without a master %s "
                "(calib.calibration.require.%s=auto; set it to true to refuse)",
                night or "?",
                kind,
                kind,
                kind,
            )


def _select(
    meta: FrameMetadata, kind: str, records: list[MasterRecord], settings: CalibSettings
) -> MasterRecord:
    """The master for a frame; with ``allow_outside_window`` the nearest matching one at any time."""
    try:
        return select_master(meta, kind, records, config=settings.grouping)
    except MissingCalibrationError:
        if not settings.allow_outside_window:
            raise
        wide = [r.model_copy(update={"valid_from": None, "valid_to": None}) for r in records]
        chosen = select_master(meta, kind, wide, config=settings.grouping)
        log.warning("using master %s %s outside its validity window", kind, chosen.name)
        return chosen


_MASTER_COMMON = ("calib.grouping", "calib.calibration", "calib.comparison", "calib.allow_outside_window")


class MasterStage(Stage):
    """Combine the bias, dark or flat frames of each group into a master (one subclass per kind)."""

    kind: ClassVar[str]
    #: the master kinds each kind is made with (their stages are in ``reads``)
    depends_on_kinds: ClassVar[dict[str, tuple[str, ...]]] = {
        "bias": (),
        "dark": ("bias",),
        "flat": ("bias", "dark"),
    }

    def plan(self, session: Session) -> list[Unit]:
        cfg: CalibSettings = self.config
        going_on = _GoingOn(session, cfg)
        exps = session.scalars(
            select(Exposure)
            .where(Exposure.state == "ok", Exposure.frame_type == self.kind)
            .order_by(Exposure.mjd_mid, Exposure.id)
        ).all()
        metas = [_meta(e) for e in exps]
        groups, rejected = group_calibration_frames(metas, config=cfg.grouping)
        for rej in rejected:
            exps[rej.index].state = "quarantined"
            exps[rej.index].reason = f"{self.name}: {rej.reason}"
        done = {
            (g, n)
            for g, n in session.execute(
                select(Calib.group_key, Calib.night).where(Calib.provenance_id == self.provenance_id)
            ).all()
        }
        needs = {
            kind: _master_records(session, kind, self.upstream) for kind in self.depends_on_kinds[self.kind]
        }
        units = []
        for group in groups:
            gkey = describe_key(group.key)
            if (gkey, group.night) in done:
                continue
            first = metas[group.indices[0]]
            payload: dict[str, Any] = {
                "group_key": gkey,
                "night": group.night,
                "inputs": [(exps[i].id, exps[i].path, exps[i].meta) for i in group.indices],
                "record": MasterRecord.from_group(group, name="").model_dump(mode="json"),
            }
            for kind, records in needs.items():
                try:
                    chosen = _select(first, kind, records, cfg)
                    payload[kind] = (chosen.path, chosen.sha256)
                except MissingCalibrationError as err:
                    if not going_on.may_skip(kind, group.night):
                        payload["error"] = f"{self.name} {gkey}: {err.reason}"
                    payload[kind] = None
            units.append(Unit(key=f"{self.kind}:{group.night}:{short_hash(gkey)}", payload=payload))
        going_on.warn()
        return units

    def run(self, unit: Unit) -> dict[str, Any]:
        cfg: CalibSettings = self.config
        p = unit.payload
        if "error" in p:
            raise MissingCalibrationError(p["error"])
        metas = [FrameMetadata.model_validate(m) for _, _, m in p["inputs"]]
        frames = [
            prepare_raw(read_raw(path).data, meta, config=cfg.calibration).data
            for (_, path, _), meta in zip(p["inputs"], metas, strict=True)
        ]
        bias = read_master(self.root / p["bias"][0], p["bias"][1]) if p.get("bias") else None
        dark = read_master(self.root / p["dark"][0], p["dark"][1]) if p.get("dark") else None
        exptimes = [m.exptime_s or 0.0 for m in metas]
        if self.kind == "bias":
            master = make_master_bias(frames, config=cfg.masters)
        elif self.kind == "dark":
            master = make_master_dark(frames, exptime_s=exptimes, bias=bias, config=cfg.masters)
        else:
            master = make_master_flat(
                frames, bias=bias, dark=dark, exptime_s=exptimes, filter=metas[0].filter, config=cfg.masters
            )
        name = f"{self.kind}_{p['night']}_{short_hash(p['group_key'])}.fits"
        path = self.product_path("calib", self.provenance_id, name)
        master = master.with_name(name)
        header = fits.Header()
        header["GROUPKEY"] = (p["group_key"][:68], "calibration group")
        header["NIGHT"] = (p["night"] or "", "night of the inputs")
        for i, (_, raw_path, _) in enumerate(p["inputs"][:99]):
            header[f"INPUT{i:02d}"] = Path(raw_path).name[:68]
        _write_fits(master_to_hdus(master, header=header), path)
        stats = {
            "mean": master.mean,
            "noise": master.noise,
            "rejected_fraction": master.rejected_fraction,
            "n_inputs": master.n_inputs,
            "read_noise_adu": master.read_noise_adu,
            "gain_e_per_adu": master.gain_e_per_adu,
            "level_adu": master.level_adu,
            "includes_bias": master.includes_bias,
        }
        record = dict(p["record"])
        record["includes_bias"] = master.includes_bias
        stats["record"] = record
        return {"path": self.relative(path), "sha256": sha256_file(path), "stats": jsonable(stats)}

    def forget_products(self, session: Session) -> None:
        for row in session.scalars(
            select(Calib).where(Calib.kind == self.kind, Calib.provenance_id == self.provenance_id)
        ):
            session.delete(row)

    def record(self, session: Session, unit: Unit, result: dict[str, Any]) -> None:
        p = unit.payload
        rec = p["record"]
        t_mid = rec.get("time_mid_utc")
        row = Calib(
            kind=self.kind,
            group_key=p["group_key"],
            night=p["night"],
            instrument=rec.get("instrument"),
            filter=rec.get("filter"),
            exptime_s=rec.get("exptime_s"),
            binning_x=rec.get("binning_x"),
            binning_y=rec.get("binning_y"),
            valid_from_utc=_dt(rec.get("valid_from")),
            valid_to_utc=_dt(rec.get("valid_to")),
            mjd_mid=Time(t_mid).mjd if t_mid else None,
            path=result["path"],
            sha256=result["sha256"],
            n_inputs=len(p["inputs"]),
            stats=result["stats"],
            provenance_id=self.provenance_id,
        )
        row.inputs = [CalibInput(exposure_id=eid) for eid, _, _ in p["inputs"]]
        session.add(row)
        session.flush()
        self._compare_in_sequence(session, row)

    def _compare_in_sequence(self, session: Session, row: Calib) -> None:
        """Compare the new master with the previous one of its group, and the next one with it.

        Done when recording (on the driver) because units finish in any order: a
        master recorded before its predecessor is compared again once that arrives.
        """
        group = session.scalars(
            select(Calib).where(
                Calib.kind == self.kind,
                Calib.group_key == row.group_key,
                Calib.provenance_id == self.provenance_id,
            )
        ).all()
        ordered = sorted(group, key=lambda c: (c.mjd_mid is None, c.mjd_mid or 0.0, c.id))
        i = ordered.index(row)
        pairs = []
        if i > 0:
            pairs.append((row, ordered[i - 1]))
        if i + 1 < len(ordered):
            pairs.append((ordered[i + 1], row))
        for new, previous in pairs:
            cmp = compare_masters(
                read_master(self.root / new.path, new.sha256),
                read_master(self.root / previous.path, previous.sha256),
                config=self.config.comparison,
            )
            new.stats = {
                **new.stats,
                "comparison": jsonable(
                    {
                        "previous_id": previous.id,
                        "previous_night": previous.night,
                        "mean_shift": cmp.mean_shift,
                        "noise_ratio": cmp.noise_ratio,
                        "changed_fraction": cmp.changed_fraction,
                        "residual_scatter": cmp.residual_scatter,
                        "reasons": list(cmp.reasons),
                    }
                ),
            }
            new.flag = "; ".join(cmp.reasons) if cmp.flagged else None
            if cmp.flagged:
                log.warning(
                    "master %s of %s differs from %s's: %s", self.kind, new.night, previous.night, new.flag
                )


class MasterBiasStage(MasterStage):
    name = "master_bias"
    kind = "bias"
    settings = (*_MASTER_COMMON, "calib.masters.bias", "calib.masters.min_frames")


class MasterDarkStage(MasterStage):
    name = "master_dark"
    kind = "dark"
    reads = ("master_bias",)
    settings = (
        *_MASTER_COMMON,
        "calib.masters.dark",
        "calib.masters.min_frames",
        "calib.masters.dark_exptime_tolerance_s",
    )


class MasterFlatStage(MasterStage):
    name = "master_flat"
    kind = "flat"
    reads = ("master_bias", "master_dark")
    settings = (
        *_MASTER_COMMON,
        "calib.masters.flat",
        "calib.masters.min_frames",
        "calib.masters.flat_min_level",
    )


class BadPixelStage(Stage):
    """One bad-pixel mask per camera and night: hot pixels from the master dark, low/high
    pixels from the master flats, bad columns and rows from both, and the user's list."""

    name = "bad_pixels"
    reads = ("master_dark", "master_flat")
    settings = ("calib.bad_pixels", "calib.user_badpixels")

    def plan(self, session: Session) -> list[Unit]:
        darks = session.scalars(
            select(Calib).where(Calib.kind == "dark", Calib.provenance_id.in_(self.upstream))
        ).all()
        flats = session.scalars(
            select(Calib).where(Calib.kind == "flat", Calib.provenance_id.in_(self.upstream))
        ).all()
        done = set(
            session.scalars(
                select(Calib.group_key).where(Calib.kind == "bpm", Calib.provenance_id == self.provenance_id)
            )
        )
        cameras: dict[tuple, dict[str, list]] = {}
        for row in [*darks, *flats]:
            rec = row.stats.get("record", {})
            cam = (
                rec.get("instrument"),
                rec.get("binning_x"),
                rec.get("binning_y"),
                rec.get("naxis1"),
                rec.get("naxis2"),
                row.night,
            )
            cameras.setdefault(cam, {"dark": [], "flat": []})[row.kind].append(
                (row.path, row.sha256, row.exptime_s, row.id)
            )
        units = []
        for cam, masters in sorted(cameras.items(), key=lambda kv: str(kv[0])):
            gkey = f"bpm {cam[0]} {cam[1]}x{cam[2]} {cam[3]}x{cam[4]}"
            if f"{gkey} {cam[5]}" in done:
                continue
            darks_sorted = sorted(
                masters["dark"], key=lambda d: -(d[2] or 0)
            )  # longest dark: most hot-pixel signal
            units.append(
                Unit(
                    key=f"bpm:{cam[5]}:{short_hash(gkey)}",
                    payload={
                        "group_key": f"{gkey} {cam[5]}",
                        "camera": list(cam),
                        "dark": darks_sorted[:1],
                        "flats": masters["flat"],
                    },
                )
            )
        return units

    def run(self, unit: Unit) -> dict[str, Any]:
        cfg: CalibSettings = self.config
        p = unit.payload
        dark = read_master(self.root / p["dark"][0][0], p["dark"][0][1]) if p["dark"] else None
        flats = [read_master(self.root / f[0], f[1]) for f in p["flats"]]
        shape = (dark or flats[0]).shape
        user = None
        if cfg.user_badpixels:
            user_path = Path(cfg.user_badpixels)
            user = read_user_badpixels(user_path if user_path.is_absolute() else self.root / user_path)
        reasons = np.zeros(shape, dtype=np.uint8)
        cols: set[int] = set()
        rows: set[int] = set()
        for flat in flats or [None]:
            m = build_bad_pixel_mask(
                shape,
                dark=None if dark is None or dark.includes_bias else dark.data,
                dark_exptime_s=None if dark is None else dark.exptime_s,
                flat=None if flat is None else flat.data,
                user=user,
                config=cfg.bad_pixels,
            )
            reasons |= m.reasons
            cols.update(m.bad_columns)
            rows.update(m.bad_rows)
        night = p["camera"][5]
        name = f"bpm_{night}_{short_hash(p['group_key'])}.fits"
        path = self.product_path("calib", self.provenance_id, name)
        h = fits.Header()
        h["MASTTYPE"] = ("bpm", "bad-pixel mask: BadPixelReason bits")
        for bit in BadPixelReason:
            h[f"BP_{bit.name}"[:8]] = (int(bit.value), f"reason bit {bit.name}")
        h["BADCOLS"] = ",".join(str(c) for c in sorted(cols))[:68]
        h["BADROWS"] = ",".join(str(r) for r in sorted(rows))[:68]
        _write_fits(fits.HDUList([fits.PrimaryHDU(reasons, header=h)]), path)
        counts = {
            bit.name.lower(): int(np.count_nonzero(reasons & np.uint8(bit.value))) for bit in BadPixelReason
        }
        return {
            "path": self.relative(path),
            "sha256": sha256_file(path),
            "stats": {
                "n_bad": int(np.count_nonzero(reasons)),
                "counts": counts,
                "bad_columns": sorted(cols),
                "bad_rows": sorted(rows),
            },
        }

    def forget_products(self, session: Session) -> None:
        session.execute(delete(Calib).where(Calib.kind == "bpm", Calib.provenance_id == self.provenance_id))

    def record(self, session: Session, unit: Unit, result: dict[str, Any]) -> None:
        p = unit.payload
        instrument, bx, by, n1, n2, night = p["camera"]
        session.add(
            Calib(
                kind="bpm",
                group_key=p["group_key"],
                night=night,
                instrument=instrument,
                binning_x=bx,
                binning_y=by,
                path=result["path"],
                sha256=result["sha256"],
                n_inputs=len(p["dark"]) + len(p["flats"]),
                stats={**result["stats"], "record": {"naxis1": n1, "naxis2": n2}},
                provenance_id=self.provenance_id,
            )
        )


class CalibrateStage(Stage):
    """Calibrate each light frame: overscan/trim, bias, dark, flat, bad pixels, cosmic rays,
    variance; write SCI/MASK/VAR."""

    name = "calibrate"
    reads = ("master_bias", "master_dark", "master_flat", "bad_pixels")
    settings = ("calib.grouping", "calib.calibration", "calib.allow_outside_window")

    def plan(self, session: Session) -> list[Unit]:
        cfg: CalibSettings = self.config
        going_on = _GoingOn(session, cfg)
        done = set(
            session.scalars(select(Image.exposure_id).where(Image.provenance_id == self.provenance_id))
        )
        records = {k: _master_records(session, k, self.upstream) for k in ("bias", "dark", "flat")}
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
            meta = _meta(e)
            payload: dict[str, Any] = {"path": e.path, "meta": e.meta}
            if meta.precalibrated:  # survey products: the pixels are kept, no master is asked for
                payload["precalibrated"] = True
                units.append(Unit(key=f"exp:{e.id}", payload={**payload, "exposure_id": e.id}))
                continue
            errors = []
            for kind in ("bias", "dark", "flat"):
                try:
                    chosen = _select(meta, kind, records[kind], cfg)
                    payload[kind] = (chosen.path, chosen.sha256)
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
        bpm = _read_bpm_cached(str(self.root / p["bpm"][0]), p["bpm"][1]) if p.get("bpm") else None
        if meta.subframe_x is not None or meta.subframe_y is not None:
            # a subframe read-out: the matching cut of the full-frame masters
            shape = prepare_raw(raw.data, meta, config=cfg.calibration).data.shape
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
        _write_fits(result.to_hdus(), path)
        finite = np.isfinite(result.sci)
        return {
            "path": self.relative(path),
            "sha256": sha256_file(path),
            "calib": jsonable(
                {
                    "gain_e_per_adu": result.gain_e_per_adu,
                    "read_noise_e": result.read_noise_e,
                    "saturation_adu": result.saturation_adu,
                    "n_cosmic_pixels": result.n_cosmic_pixels,
                    "n_bad_pixels": result.n_bad_pixels,
                    "n_saturated": result.n_saturated,
                    "median_adu": float(np.median(result.sci[finite])) if finite.any() else None,
                    "masters": {k: (p[k][0] if p.get(k) else None) for k in ("bias", "dark", "flat", "bpm")},
                    "skipped_masters": p.get("skipped_masters", []),
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
        session.execute(delete(Image).where(Image.provenance_id == self.provenance_id))

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
                quality={"calib": result["calib"]},
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


def _dt(value):
    if value is None:
        return None
    from datetime import datetime

    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
