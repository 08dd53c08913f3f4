"""Benchmark: calibrating one frame (1k and 4k), without and with cosmic rays.

darkroom.calib.calibrate_frame: saturation flags, overscan subtraction and trim,
bias, dark scaled by exposure time, flat, the variance plane, bad-pixel
interpolation (0.1% bad pixels); optionally cosmic rays (sparse L.A.Cosmic with a
sep sky model). Compared with ccdproc.ccd_process doing overscan, trim, bias,
dark, flat and gain with error propagation (no bad-pixel interpolation, no
cosmic rays), when ccdproc is installed.

    .venv/bin/python bench/bench_calibrate.py [--sizes 1024 4096] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from darkroom.calib.badpix import BadPixelMask
from darkroom.calib.masters import MasterFrame
from darkroom.calib.process import CalibrationConfig, calibrate_frame
from darkroom.instruments.metadata import FrameMetadata

sys.path.insert(0, str(Path(__file__).parent))
from _common import measure, print_table

OVERSCAN_COLS = 32


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # ccdproc warns about negative values in the error
    rows = []
    for n in args.sizes:
        rows += run_size(n, args.repeat)
    print("ratio = seconds / ccdproc.ccd_process (overscan, trim, bias, dark, flat, error) when installed")
    print_table(rows)


if __name__ == "__main__":
    main()
