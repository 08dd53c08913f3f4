"""The master stages (bias, dark, flat) and the helpers the bad_pixels and calibrate stages share.

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
from sqlalchemy import select
from sqlalchemy.orm import Session

from darkroom.calib.badpix import (
    BadPixelMask,
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
from darkroom.calib.process import prepare_pixels
from darkroom.calib.settings import CalibSettings
from darkroom.errors import MissingCalibrationError
from darkroom.instruments.metadata import FrameMetadata
from darkroom.io.rawfits import read_raw
from darkroom.pipeline._products import jsonable, short_hash
from darkroom.pipeline.stage import Stage, Unit
from darkroom.repo.models import Calib, CalibInput, Exposure
from darkroom.repo.store import atomic_path, sha256_file

__all__ = [
    "GoingOn",
    "MasterBiasStage",
    "MasterDarkStage",
    "MasterFlatStage",
    "MasterStage",
    "exposure_meta",
    "master_records",
    "read_bpm",
    "read_master",
    "select_master_for",
    "write_fits",
]

log = logging.getLogger(__name__)


def write_fits(hdul: fits.HDUList, path: Path) -> None:
    """Write HDUs atomically; long history/comment cards are truncated quietly."""
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        hdul.writeto(tmp)


def exposure_meta(row: Exposure) -> FrameMetadata:
    return FrameMetadata.model_validate(row.meta)


@lru_cache(maxsize=16)
def _read_master_cached(path: str, sha256: str) -> MasterFrame:
    with fits.open(path, memmap=False) as hdul:
        return master_from_hdus(hdul, name=Path(path).name)


def read_master(path: Path | str, sha256: str = "") -> MasterFrame:
    """A stored master (cached per worker by path and checksum)."""
    return _read_master_cached(str(path), sha256)


@lru_cache(maxsize=8)
def read_bpm(path: str, sha256: str) -> BadPixelMask:
    with fits.open(path, memmap=False) as hdul:
        reasons = np.asarray(hdul[0].data, dtype=np.uint8)
        h = hdul[0].header
    cols = tuple(int(c) for c in str(h.get("BADCOLS", "")).split(",") if c.strip())
    rows = tuple(int(c) for c in str(h.get("BADROWS", "")).split(",") if c.strip())
    return BadPixelMask(reasons, cols, rows, Path(path).name)


def master_records(session: Session, kind: str, provenance_ids: tuple[str, ...]) -> list[MasterRecord]:
    rows = session.scalars(
        select(Calib).where(Calib.kind == kind, Calib.provenance_id.in_(provenance_ids)).order_by(Calib.id)
    ).all()
    out = []
    for r in rows:
        rec = dict(r.stats.get("record", {}))
        rec.update(name=str(r.id), path=r.path, sha256=r.sha256 or "")
        out.append(MasterRecord.model_validate(rec))
    return out


class GoingOn:
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


def select_master_for(
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

    reads_raw_files = True

    kind: ClassVar[str]
    #: the master kinds each kind is made with (their stages are in ``reads``)
    depends_on_kinds: ClassVar[dict[str, tuple[str, ...]]] = {
        "bias": (),
        "dark": ("bias",),
        "flat": ("bias", "dark"),
    }

    def plan(self, session: Session) -> list[Unit]:
        cfg: CalibSettings = self.config
        going_on = GoingOn(session, cfg)
        exps = session.scalars(
            select(Exposure)
            .where(Exposure.state == "ok", Exposure.frame_type == self.kind)
            .order_by(Exposure.mjd_mid, Exposure.id)
        ).all()
        metas = [exposure_meta(e) for e in exps]
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
            kind: master_records(session, kind, self.upstream) for kind in self.depends_on_kinds[self.kind]
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
                    chosen = select_master_for(first, kind, records, cfg)
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
        # the pixels alone (no saturation mask), corrected in the arrays read_raw hands over
        frames = [
            prepare_pixels(read_raw(path).data, meta, config=cfg.calibration, overwrite=True)
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
        write_fits(master_to_hdus(master, header=header), path)
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
        if master.dark_model is not None:  # darks: which method 'auto' resolved to (DARKMODL too)
            stats["dark_model"] = master.dark_model
            stats["modelled_fraction"] = master.modelled_fraction
        record = dict(p["record"])
        record["includes_bias"] = master.includes_bias
        stats["record"] = record
        return {"path": self.relative(path), "sha256": sha256_file(path), "stats": jsonable(stats)}

    def forget_products(self, session: Session) -> None:
        """Delete this provenance's masters (rows and files)."""
        paths = []
        for row in session.scalars(
            select(Calib).where(Calib.kind == self.kind, Calib.provenance_id == self.provenance_id)
        ):
            paths.append(row.path)
            session.delete(row)
        self.remove_files(paths)

    def record(self, session: Session, unit: Unit, result: dict[str, Any]) -> None:
        p = unit.payload
        row = master_row(
            self.kind,
            p,
            result,
            stats=result["stats"],
            exptime_s=p["record"].get("exptime_s"),
            provenance_id=self.provenance_id,
        )
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
        "calib.masters.dark_model",
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


def master_row(
    kind: str,
    payload: dict[str, Any],
    result: dict[str, Any],
    *,
    stats: dict[str, Any],
    exptime_s: float | None,
    provenance_id: int,
) -> Calib:
    """The ``calib`` row (with its ``calib_input`` rows) of a master made from a unit's
    ``payload`` (its group, night, inputs and the group's record) and written to
    ``result['path']`` (``result['sha256']``)."""
    from astropy.time import Time

    rec = payload["record"]
    t_mid = rec.get("time_mid_utc")
    row = Calib(
        kind=kind,
        group_key=payload["group_key"],
        night=payload["night"],
        instrument=rec.get("instrument"),
        filter=rec.get("filter"),
        exptime_s=exptime_s,
        binning_x=rec.get("binning_x"),
        binning_y=rec.get("binning_y"),
        valid_from_utc=_dt(rec.get("valid_from")),
        valid_to_utc=_dt(rec.get("valid_to")),
        mjd_mid=Time(t_mid).mjd if t_mid else None,
        path=result["path"],
        sha256=result["sha256"],
        n_inputs=len(payload["inputs"]),
        stats=stats,
        provenance_id=provenance_id,
    )
    row.inputs = [CalibInput(exposure_id=eid) for eid, _, _ in payload["inputs"]]
    return row


def _dt(value):
    if value is None:
        return None
    from datetime import datetime

    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
