"""Benchmark: calibrating one frame, synthetic (1k and 4k) and real (the ARCSAT night).

Synthetic table: darkroom.calib.calibrate_frame (saturation flags, overscan subtraction and
trim, bias, dark scaled by exposure time, flat, the variance plane, bad-pixel interpolation
(0.1% bad pixels); optionally cosmic rays (sparse L.A.Cosmic with a sep sky model and the
star guard)) against ccdproc.ccd_process doing overscan, trim, bias, dark, flat and gain with
error propagation (no bad-pixel interpolation, no cosmic rays), when ccdproc is installed.

ARCSAT table (``--night``, default on when ../shared/data is there): the calibrate stage per
1k x 1k frame of the XO-1b night (gzip-compressed raw FITS, ~25 stars), step by step (read, the
read of a frame ingest kept (a serial ``darkroom run --ingest``),
calibrate without and with cosmic rays (and with sep.Background as the cosmic-ray step's sky
model instead of darkroom.skymesh's compiled estimator, whose maps are the same bit for bit; and
that sky model alone, both ways), write SCI/MASK/VAR with its SHA-256, the whole stage unit), against the peer's per-frame calibration (ccdproc bias/dark/flat + astroscrappy +
write, ``bench/_peer_calibrate.py`` in the ``.venv-peer`` interpreter that ``make bench``
makes; ``DARKROOM_PEER_PYTHON`` names another). Seconds are CPU seconds per frame
(``time.process_time``, median over the frames: the machine is shared, CPU time is steadier
than wall time), peak memory the traced peak of one frame; the load average is printed.

    .venv/bin/python bench/bench_calibrate.py [--sizes 1024 4096] [--repeat 3] [--frames 20]
        [--no-night] [--night-only]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

from darkroom.calib.badpix import BadPixelMask
from darkroom.calib.masters import MasterFrame
from darkroom.calib.process import CalibrationConfig, calibrate_frame
from darkroom.instruments.metadata import FrameMetadata

sys.path.insert(0, str(Path(__file__).parent))
from _common import measure, print_table

OVERSCAN_COLS = 32
PEER_PYTHON = Path(__file__).resolve().parents[1] / ".venv-peer" / "bin" / "python"
XO1 = "targets=[{name: XO-1, ra_deg: 240.549333, dec_deg: 28.169556}]"


def setup(n: int):
    rng = np.random.default_rng(0)
    shape = (n, n)
    gain, rn_adu, sky = 1.5, 6.0, 300.0  # consistent with the noise model: sigma^2 = sky / gain + rn^2
    raw = np.empty((n, n + OVERSCAN_COLS), dtype=np.float32)
    raw[:, :OVERSCAN_COLS] = 1000 + rn_adu * rng.standard_normal((n, OVERSCAN_COLS), dtype=np.float32)
    sigma = np.float32(np.sqrt(sky / gain + rn_adu**2))
    raw[:, OVERSCAN_COLS:] = 1000 + 5 + 1.5 + sky + sigma * rng.standard_normal(shape, dtype=np.float32)

    def master(kind, level, noise, **kw):
        data = (level + noise * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        var = np.full(shape, noise**2, dtype=np.float32)
        return MasterFrame(
            kind=kind,
            data=data,
            variance=var,
            n_inputs=10,
            rejected_fraction=0.0,
            mean=level,
            noise=noise,
            name=f"{kind}.fits",
            **kw,
        )

    bias = master("bias", 5.0, 2.0, read_noise_adu=rn_adu)
    dark = master("dark", 3.0, 1.0, exptime_s=120.0)
    flat = master("flat", 1.0, 0.002, gain_e_per_adu=gain)
    reasons = np.zeros(shape, dtype=np.uint8)
    reasons.ravel()[rng.choice(n * n, n * n // 1000, replace=False)] = 1
    bpm = BadPixelMask(reasons=reasons, name="bpm.fits")
    meta = FrameMetadata(
        profile="bench",
        frame_type="light",
        exptime_s=60.0,
        filter="r",
        naxis1=n + OVERSCAN_COLS,
        naxis2=n,
        gain_e_per_adu=1.5,
        read_noise_e=9.0,
        saturation_adu=65535.0,
        overscan_section=f"[1:{OVERSCAN_COLS},1:{n}]",
        trim_section=f"[{OVERSCAN_COLS + 1}:{n + OVERSCAN_COLS},1:{n}]",
    )
    return raw, meta, bias, dark, flat, bpm


def run_size(n: int, repeat: int) -> list[dict]:
    raw, meta, bias, dark, flat, bpm = setup(n)
    no_cr = CalibrationConfig(do_cosmic_rays=False)
    t0, m0, _ = measure(
        lambda: calibrate_frame(raw, meta, bias=bias, dark=dark, flat=flat, bad_pixels=bpm, config=no_cr),
        repeat=repeat,
    )
    t1, m1, _ = measure(
        lambda: calibrate_frame(raw, meta, bias=bias, dark=dark, flat=flat, bad_pixels=bpm), repeat=repeat
    )
    rows = []
    base = t0
    try:
        import ccdproc
        from astropy import units as u
        from astropy.nddata import CCDData
    except ImportError:
        rows.append({"stage": "ccdproc: not installed", "size": f"{n}^2"})
    else:
        ccd = CCDData(raw, unit="adu", meta={"exptime": 60.0})
        mb = CCDData(bias.data, unit="adu")
        md = CCDData(dark.data, unit="adu", meta={"exptime": 120.0})
        mf = CCDData(flat.data, unit="adu")

        def run_ccdproc():
            return ccdproc.ccd_process(
                ccd,
                oscan=f"[1:{OVERSCAN_COLS},1:{n}]",
                trim=f"[{OVERSCAN_COLS + 1}:{n + OVERSCAN_COLS},1:{n}]",
                error=True,
                gain=1.5 * u.electron / u.adu,
                readnoise=9.0 * u.electron,
                master_bias=mb,
                dark_frame=md,
                master_flat=mf,
                exposure_key="exptime",
                exposure_unit=u.s,
                dark_scale=True,
                gain_corrected=False,
            )

        base, mref, _ = measure(run_ccdproc, repeat=repeat)
        rows.append(
            {
                "stage": f"ccdproc {ccdproc.__version__} ccd_process (+error)",
                "size": f"{n}^2",
                "seconds": base,
                "peak_MB": mref,
                "ratio": 1.0,
            }
        )
    rows.append(
        {
            "stage": "darkroom calibrate_frame, no cosmic rays",
            "size": f"{n}^2",
            "seconds": t0,
            "peak_MB": m0,
            "ratio": t0 / base,
        }
    )
    rows.append(
        {
            "stage": "darkroom calibrate_frame, with cosmic rays",
            "size": f"{n}^2",
            "seconds": t1,
            "peak_MB": m1,
            "ratio": t1 / base,
        }
    )
    return rows


def _cpu_per_frame(fn: Callable[[object], object], items: list) -> tuple[float, float]:
    """Median CPU seconds of ``fn(item)`` over the items, and the traced peak [MB] of the first."""
    tracemalloc.start()
    fn(items[0])
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    times = []
    for item in items:
        t = time.process_time()
        fn(item)
        times.append(time.process_time() - t)
    return statistics.median(times), peak


def _cpu_per_kept_read(paths: list[str]) -> tuple[float, float]:
    """Median CPU seconds of re-reading a raw frame that a first read (ingest's) kept
    (darkroom.io.keep), and the traced peak [MB] of the first re-read."""
    from darkroom.io.keep import keeping
    from darkroom.io.rawfits import ReadLimits, read_raw

    times = []
    peak = 0.0
    with keeping(1 << 30):
        for i, path in enumerate(paths):
            read_raw(path, limits=ReadLimits())  # ingest's read keeps it
            if i == 0:
                tracemalloc.start()
            t = time.process_time()
            read_raw(path)
            times.append(time.process_time() - t)
            if i == 0:
                peak = tracemalloc.get_traced_memory()[1] / 1e6
                tracemalloc.stop()
    return statistics.median(times[1:] or times), peak


def _peer_per_frame(data: Path, frames: list[str]) -> tuple[list[dict], float | None]:
    """Rows of the peer's per-frame steps and its total CPU seconds per frame (None: no peer)."""
    python = os.environ.get("DARKROOM_PEER_PYTHON") or str(PEER_PYTHON)
    if not Path(python).exists():
        return [{"stage": f"peer: no interpreter at {python} (make bench)", "size": "1k^2"}], None
    done = subprocess.run(
        [python, str(Path(__file__).parent / "_peer_calibrate.py"), str(data), *frames],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        return [{"stage": f"peer failed: {done.stderr.strip()[-200:]}", "size": "1k^2"}], None
    out = json.loads(done.stdout.strip().splitlines()[-1])
    per = {k: statistics.median(v) for k, v in out["cpu_s"].items()}
    total = statistics.median([sum(parts) for parts in zip(*out["cpu_s"].values(), strict=True)])
    label = f"peer: ccdproc {out['ccdproc']} + astroscrappy {out['astroscrappy']}"
    rows = [{"stage": f"{label}, per frame", "size": "1k^2", "seconds": total, "peak_MB": out["peak_mb"]}]
    rows += [{"stage": f"  peer {k}", "size": "1k^2", "seconds": v, "peak_MB": ""} for k, v in per.items()]
    return rows, total


def run_night(n_frames: int) -> list[dict]:
    """The calibrate stage per frame on the ARCSAT night, step by step, and the peer's."""
    from darkroom import (
        _threads,  # noqa: F401
        skymesh,
    )
    from darkroom.calib.process import calibrate_frame
    from darkroom.facade import Repository
    from darkroom.instruments.metadata import FrameMetadata
    from darkroom.io.calibrated import CalibratedImage, write_calibrated
    from darkroom.io.rawfits import read_raw
    from darkroom.pipeline.calibration import read_bpm, read_master
    from darkroom.pipeline.ingest import ingest_paths
    from darkroom.pipeline.run import all_stages
    from darkroom.pipeline.runner import run_stage
    from darkroom.testing import shared_data_dir

    data = shared_data_dir() / "arcsat-xo1b-transit"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = Repository.init(Path(tmp) / "repo", overrides=[XO1])
        ingest_paths(repo.registry, [data])
        for stage in all_stages(repo.root, repo.config):
            if stage.name == "calibrate":
                break
            run_stage(repo.registry, stage)  # the masters
        with repo.registry.session() as s:
            units = stage.plan(s)
        step = max(1, len(units) // n_frames)
        units = units[::step][:n_frames]
        cfg = stage.config.calibration
        no_cr = cfg.model_copy(update={"do_cosmic_rays": False})

        def inputs(unit):
            p = unit.payload
            masters = {
                k: read_master(stage.root / p[k][0], p[k][1]) if p.get(k) else None
                for k in ("bias", "dark", "flat")
            }
            bpm = read_bpm(str(stage.root / p["bpm"][0]), p["bpm"][1]) if p.get("bpm") else None
            return FrameMetadata.model_validate(p["meta"]), masters, bpm

        prepared = []
        for u in units:
            meta, masters, bpm = inputs(u)
            prepared.append((u, read_raw(u.payload["path"]), meta, masters, bpm))

        def calibrate(item, config):
            _u, raw, meta, m, bpm = item
            return calibrate_frame(raw.data, meta, **m, bad_pixels=bpm, header=raw.header, config=config)

        results = [calibrate(item, cfg) for item in prepared]
        out = Path(tmp) / "out.fits"
        # the cosmic-ray step's sky model on its kind of input (the calibrated SCI, NO_DATA
        # zeroed and masked): sep.Background against darkroom.skymesh's compiled estimator
        # (the same maps bit for bit, tests/test_sky_compiled.py)
        box = cfg.sky_box_pix
        sky_inputs = []
        for r in results:
            nodata = ~np.isfinite(r.sci)
            sky_inputs.append((np.where(nodata, np.float32(0), r.sci), nodata if nodata.any() else None))

        def sep_sky(item):
            import sep

            return sep.Background(item[0], mask=item[1], bw=box, bh=box).back()

        def compiled_sky(item):
            return skymesh.sky_background(item[0], mask=item[1], bw=box, bh=box).back()

        def calibrate_sep_sky(item):
            skymesh.COMPILED = False
            try:
                return calibrate(item, cfg)
            finally:
                skymesh.COMPILED = True

        steps = [
            ("read raw (gzip FITS)", lambda item: read_raw(item[0].payload["path"]), prepared),
            ("calibrate_frame, no cosmic rays", lambda item: calibrate(item, no_cr), prepared),
            ("calibrate_frame, with cosmic rays", lambda item: calibrate(item, cfg), prepared),
            ("calibrate_frame, with cosmic rays, sep's sky model", calibrate_sep_sky, prepared),
            ("  cosmic-ray sky model: sep.Background + back()", sep_sky, sky_inputs),
            ("  cosmic-ray sky model: skymesh (compiled)", compiled_sky, sky_inputs),
            (
                "write SCI/MASK/VAR + SHA-256",
                lambda r: write_calibrated(
                    out, CalibratedImage(sci=r.sci, header=r.header, mask=r.mask, var=r.var)
                ),
                results,
            ),
            ("calibrate stage unit (all of it)", stage.run, units),
        ]
        measured = [(name, *_cpu_per_frame(fn, items)) for name, fn, items in steps]
        # a serial `darkroom run --ingest`: the frame ingest read, taken from the keeper
        measured.insert(
            1, ("read raw, kept by ingest", *_cpu_per_kept_read([u.payload["path"] for u in units]))
        )
        repo.close()
    peer_rows, peer_total = _peer_per_frame(data, [u.payload["path"] for u in units])
    rows += peer_rows
    for name, seconds, peak in measured:
        rows.append(
            {
                "stage": f"darkroom {name}",
                "size": "1k^2",
                "seconds": seconds,
                "peak_MB": peak,
                "ratio": seconds / peer_total if peer_total else "",
            }
        )
    if peer_total:
        rows[0]["ratio"] = 1.0
    cols = ("stage", "size", "seconds", "peak_MB", "ratio")
    return [{c: row.get(c, "") for c in cols} for row in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--frames", type=int, default=20, help="ARCSAT frames timed (spread over the night)")
    ap.add_argument("--no-night", action="store_true", help="skip the ARCSAT table")
    ap.add_argument("--night-only", action="store_true", help="only the ARCSAT table")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # ccdproc warns about negative values in the error
    if not args.night_only:
        rows = []
        for n in args.sizes:
            rows += run_size(n, args.repeat)
        print(
            "ratio = seconds / ccdproc.ccd_process (overscan, trim, bias, dark, flat, error) when installed"
        )
        print_table(rows)
    if not args.no_night:
        load = os.getloadavg()
        rows = run_night(args.frames)
        print(
            f"\nARCSAT XO-1b night, per 1k x 1k frame ({args.frames} frames): CPU seconds (median), "
            f"ratio = seconds / the peer's per-frame total; load average {load[0]:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after, {os.cpu_count()} CPUs"
        )
        print_table(rows)


if __name__ == "__main__":
    main()
