"""The sky_flat stage: a night-sky flat from the lights of a night that has no flat frames.

Wiring only: :mod:`darkroom.calib.skyflat` makes the flat. One unit per night and flat key
(instrument, binning, size, set point, filter) whose lights no master flat serves, on a
night with no flat frames at all (a night with flats is never touched: its lights use its
flats, or fail for want of one). The lights are read one at a time, overscan-subtracted
and trimmed, bias- and dark-subtracted where masters exist, and streamed into the flat.
The flat is stored as a master of kind ``flat`` whose record says ``origin: sky``, valid
over its night's lights only; the calibrate stage then picks it like any master flat.
When no flat can be made (too few lights, a static field, an unknown zero level and a
constant sky) the unit is done with the reason logged, and the lights are calibrated
without a flat as before.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from sqlalchemy import select
from sqlalchemy.orm import Session

from darkroom.calib.grouping import MasterRecord, describe_key, required_key
from darkroom.calib.settings import CalibSettings
from darkroom.errors import MissingCalibrationError
from darkroom.instruments.metadata import FrameMetadata
from darkroom.pipeline._products import jsonable, short_hash
from darkroom.pipeline.calibration import (
    GoingOn,
    exposure_meta,
    master_records,
    master_row,
    read_master,
    select_master_for,
    write_fits,
)
from darkroom.pipeline.stage import Stage, Unit
from darkroom.repo.models import Calib, Exposure, Task
from darkroom.repo.store import sha256_file

__all__ = ["SkyFlatStage"]

log = logging.getLogger(__name__)


class SkyFlatStage(Stage):
    """A sky flat per night and filter with no flat frames, from its drifting or dithered lights."""

    name = "sky_flat"
    reads_raw_files = True
    reads = ("master_bias", "master_dark", "master_flat")
    settings = ("calib.grouping", "calib.calibration", "calib.allow_outside_window", "calib.sky_flat")

    def plan(self, session: Session) -> list[Unit]:
        cfg: CalibSettings = self.config
        if not cfg.sky_flat.enabled:
            return []
        going_on = GoingOn(session, cfg)
        done = set(
            session.scalars(
                select(Task.key).where(
                    Task.stage == self.name, Task.provenance_id == self.provenance_id, Task.state == "done"
                )
            )
        )
        records = {k: master_records(session, k, self.upstream) for k in ("bias", "dark", "flat")}
        groups: dict[tuple[str | None, str], list[tuple[Exposure, FrameMetadata]]] = {}
        for e in session.scalars(
            select(Exposure)
            .where(Exposure.state == "ok", Exposure.frame_type == "light")
            .order_by(Exposure.mjd_mid, Exposure.id)
        ):
            meta = exposure_meta(e)
            if meta.precalibrated:
                continue
            gkey = describe_key(required_key(meta, "flat", config=cfg.grouping))
            groups.setdefault((e.night, gkey), []).append((e, meta))
        units = []
        for (night, gkey), members in groups.items():
            first = members[0][1]
            try:
                select_master_for(first, "flat", records["flat"], cfg)
                continue  # a master flat serves these lights
            except MissingCalibrationError:
                pass
            if not going_on.may_skip("flat", night):
                continue  # the night has flats: the calibrate stage says which one is missing
            key = f"skyflat:{night}:{short_hash(gkey)}"
            if key in done:
                continue
            if len(members) < cfg.sky_flat.min_frames:
                log.info(
                    "night %s: %d lights (%s), too few for a sky flat (calib.sky_flat.min_frames=%d)",
                    night,
                    len(members),
                    gkey,
                    cfg.sky_flat.min_frames,
                )
                continue
            payload: dict[str, Any] = {
                "group_key": gkey,
                "night": night,
                "inputs": [(e.id, e.path, e.meta) for e, _ in members],
                "record": _record([m for _, m in members], first, cfg),
            }
            for kind in ("bias", "dark"):
                try:
                    chosen = select_master_for(first, kind, records[kind], cfg)
                    payload[kind] = (chosen.path, chosen.sha256)
                except MissingCalibrationError:
                    payload[kind] = None
            units.append(Unit(key=key, payload=payload))
        return units

    def run(self, unit: Unit) -> dict[str, Any]:
        # the algorithms load when a unit runs (start-up of every command stays light)
        from darkroom.calib.masters import MasterFrame, master_to_hdus
        from darkroom.calib.process import prepare_raw
        from darkroom.calib.skyflat import SkyFlatAccumulator
        from darkroom.io.rawfits import read_raw
        from darkroom.robust import robust_std

        cfg: CalibSettings = self.config
        p = unit.payload
        bias = read_master(self.root / p["bias"][0], p["bias"][1]) if p.get("bias") else None
        dark = read_master(self.root / p["dark"][0], p["dark"][1]) if p.get("dark") else None
        acc: SkyFlatAccumulator | None = None
        meta = None
        for _, path, m in p["inputs"]:
            meta = FrameMetadata.model_validate(m)
            prep = prepare_raw(read_raw(path).data, meta, config=cfg.calibration)
            data = prep.data
            zero_known = prep.overscan_level_adu is not None
            if bias is not None:
                data -= bias.data
                zero_known = True
            if dark is not None:
                if dark.includes_bias:
                    data -= dark.data
                    zero_known = True
                elif meta.exptime_s and dark.exptime_s:
                    data -= dark.data * np.float32(meta.exptime_s / dark.exptime_s)
            if acc is None:
                acc = SkyFlatAccumulator(data.shape, zero_known=zero_known, config=cfg.sky_flat)
            acc.add(data, prep.saturated)
        result = acc.result()
        stats: dict[str, Any] = {
            "origin": "sky",
            "made": result.made,
            "reason": result.reason,
            "description": result.describe(),
            "n_inputs": result.n_frames,
            "samples_median": result.samples_median,
            "filled_fraction": result.filled_fraction,
            "outlier_fraction": result.outlier_fraction,
            "motion_pix": result.motion_pix,
            "sky_variation": result.sky_variation,
            "response_scale": result.response_scale,
            "zero_level": result.zero_level,
            "noise": result.noise,
        }
        if not result.made:
            return {"stats": jsonable(stats)}
        name = f"skyflat_{p['night']}_{short_hash(p['group_key'])}.fits"
        path = self.product_path("calib", self.provenance_id, name)
        finite = result.flat[np.isfinite(result.flat)]
        master = MasterFrame(
            kind="flat",
            data=result.flat,
            variance=result.variance,
            n_inputs=result.n_frames,
            rejected_fraction=result.filled_fraction,
            mean=float(np.mean(finite)),
            noise=float(robust_std(finite[:: max(1, finite.size // 500_000)])),
            exptime_s=meta.exptime_s if meta is not None else None,
            filter=meta.filter if meta is not None else None,
            name=name,
        )
        header = fits.Header()
        header["FLATORIG"] = ("sky", "a night-sky flat from the lights themselves")
        header["GROUPKEY"] = (p["group_key"][:68], "calibration group")
        header["NIGHT"] = (p["night"] or "", "night of the inputs")
        header["SKYSCALE"] = (float(result.response_scale or 0.0), "response scale a (1: zero level known)")
        header["SKYMOVE"] = (round(result.motion_pix, 1), "[pixel] the field's motion over the lights")
        for i, (_, raw_path, _) in enumerate(p["inputs"][:99]):
            header[f"INPUT{i:02d}"] = Path(raw_path).name[:68]
        header.add_history(f"darkroom.calib.skyflat: {result.describe()}")
        write_fits(master_to_hdus(master, header=header), path)
        stats["mean"], stats["noise_spatial"] = master.mean, master.noise
        stats["record"] = p["record"]
        return {"path": self.relative(path), "sha256": sha256_file(path), "stats": jsonable(stats)}

    def record(self, session: Session, unit: Unit, result: dict[str, Any]) -> None:
        p = unit.payload
        stats = result["stats"]
        if not stats["made"]:
            log.warning("night %s, %s: %s", p["night"] or "?", p["group_key"], stats["description"])
            return
        log.warning(
            "night %s has no flat frames (%s): %s; frames are divided by it",
            p["night"] or "?",
            p["group_key"],
            stats["description"],
        )
        session.add(
            master_row("flat", p, result, stats=stats, exptime_s=None, provenance_id=self.provenance_id)
        )

    def forget_products(self, session: Session) -> None:
        """Delete this provenance's sky flats (rows and files)."""
        paths = []
        for row in session.scalars(
            select(Calib).where(Calib.kind == "flat", Calib.provenance_id == self.provenance_id)
        ):
            paths.append(row.path)
            session.delete(row)
        self.remove_files(paths)


def _record(metas: list[FrameMetadata], first: FrameMetadata, cfg: CalibSettings) -> dict[str, Any]:
    """The master record of a sky flat: the lights' key, valid over their own span only (a sky
    flat is made for its night; another night makes its own)."""
    need = required_key(first, "flat", config=cfg.grouping)
    times = [m.time_mid_utc for m in metas if m.time_mid_utc is not None]
    half = timedelta(seconds=max((m.exptime_s or 0.0) for m in metas) + 60.0)
    t0, t1 = (min(times), max(times)) if times else (None, None)
    rec = MasterRecord(
        name="",
        kind="flat",
        instrument=need.instrument,
        binning_x=need.binning_x,
        binning_y=need.binning_y,
        naxis1=need.naxis1,
        naxis2=need.naxis2,
        set_temp_c=need.set_temp_c,
        filter=need.filter,
        time_mid_utc=None if t0 is None else t0 + (t1 - t0) / 2,
        valid_from=None if t0 is None else t0 - half,
        valid_to=None if t1 is None else t1 + half,
    )
    out = rec.model_dump(mode="json")
    out["origin"] = "sky"
    return out
