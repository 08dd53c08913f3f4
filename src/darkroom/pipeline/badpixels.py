"""The bad_pixels stage: one bad-pixel mask per camera and night from the masters and the user's list.

Wiring only: :func:`darkroom.calib.build_bad_pixel_mask` decides.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from darkroom.calib.badpix import (
    BadPixelReason,
    build_bad_pixel_mask,
    read_user_badpixels,
)
from darkroom.calib.settings import CalibSettings
from darkroom.pipeline._products import short_hash
from darkroom.pipeline.calibration import (
    read_master,
    write_fits,
)
from darkroom.pipeline.stage import Stage, Unit
from darkroom.repo.models import Calib
from darkroom.repo.store import sha256_file

__all__ = ["BadPixelStage"]

log = logging.getLogger(__name__)


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
                # every pixel's own measurement: a denoised dark's model hides faint bad columns
                dark=None if dark is None or dark.includes_bias else dark.measured_data,
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
        write_fits(fits.HDUList([fits.PrimaryHDU(reasons, header=h)]), path)
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
        """Delete this provenance's bad-pixel masks (rows and files)."""
        where = (Calib.kind == "bpm", Calib.provenance_id == self.provenance_id)
        paths = list(session.scalars(select(Calib.path).where(*where)))
        session.execute(delete(Calib).where(*where))
        self.remove_files(paths)

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
