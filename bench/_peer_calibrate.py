"""The peer's per-frame calibration, timed frame by frame (run with the .venv-peer interpreter).

What ``../shared/tools/peer_baseline.py`` does to each light frame before photometry, with
the same calls and settings: ``CCDData.read``; ccdproc ``subtract_bias``, ``subtract_dark``
(scaled by EXPTIME) and ``flat_correct``; ``astroscrappy.detect_cosmics`` (sigclip 4.5,
sigfrac 0.3, objlim 5); the cleaned frame and its CR mask written as FITS. The masters are
plain medians of the night's bias, dark and flat frames (per-night work, not timed).

Prints one JSON object: per step, the CPU seconds [s] of every frame, and the traced peak
memory [MB] of one frame. Imports no darkroom module (the peer has its own environment).

    .venv-peer/bin/python bench/_peer_calibrate.py DATA_DIR FRAME [FRAME ...]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import astroscrappy
import ccdproc
import numpy as np
from astropy import units as u
from astropy.nddata import CCDData
from astropy.utils.exceptions import AstropyWarning

warnings.simplefilter("ignore", AstropyWarning)


def _median_master(paths: list[Path], minus=None, dark=None, normalise=False) -> CCDData:
    stack = []
    for p in paths:
        ccd = CCDData.read(p, unit="adu")
        if minus is not None:
            ccd = ccdproc.subtract_bias(ccd, minus)
        if dark is not None:
            ccd = ccdproc.subtract_dark(ccd, dark, exposure_time="EXPTIME", exposure_unit=u.s, scale=True)
        data = np.asarray(ccd.data, dtype=np.float64)
        stack.append(data / np.median(data) if normalise else data)
    master = CCDData(np.median(stack, axis=0), unit="adu", header=CCDData.read(paths[0], unit="adu").header)
    return master


def main() -> None:
    data_dir = Path(sys.argv[1])
    frames = [Path(p) for p in sys.argv[2:]]
    bias = _median_master(sorted(data_dir.glob("Bias_*.fits*")))
    dark = _median_master(sorted(data_dir.glob("Dark_*.fits*")), minus=bias)
    flat = _median_master(sorted(data_dir.glob("domeflat_z_*.fits*")), minus=bias, dark=dark, normalise=True)
    satlevel = 65535.0 - float(np.median(bias.data))
    steps = ("read", "ccdproc bias/dark/flat", "astroscrappy", "write")
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    peak_mb = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for n, path in enumerate(frames):
            if n == 0:
                tracemalloc.start()
            t = time.process_time()
            raw = CCDData.read(path, unit="adu")
            cpu["read"].append(time.process_time() - t)
            hdr = raw.header
            gain = float(hdr.get("EGAIN", hdr.get("GAIN", 1.0)))
            rdnoise = float(hdr.get("RDNOISE", 10.0))
            t = time.process_time()
            ccd = ccdproc.subtract_bias(raw, bias)
            ccd = ccdproc.subtract_dark(ccd, dark, exposure_time="EXPTIME", exposure_unit=u.s, scale=True)
            ccd = ccdproc.flat_correct(ccd, flat, min_value=0.1, norm_value=1.0)
            cpu["ccdproc bias/dark/flat"].append(time.process_time() - t)
            t = time.process_time()
            crmask, clean = astroscrappy.detect_cosmics(
                ccd.data.astype(np.float32),
                gain=gain,
                readnoise=rdnoise,
                satlevel=satlevel,
                sigclip=4.5,
                sigfrac=0.3,
                objlim=5.0,
            )
            cpu["astroscrappy"].append(time.process_time() - t)
            t = time.process_time()
            out = CCDData(clean, unit="adu", mask=crmask, header=hdr.copy())
            out.write(Path(tmp) / f"{n}_cal.fits", overwrite=True)
            cpu["write"].append(time.process_time() - t)
            if n == 0:
                peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
                tracemalloc.stop()
    print(
        json.dumps(
            {
                "cpu_s": cpu,
                "peak_mb": peak_mb,
                "astroscrappy": astroscrappy.__version__,
                "ccdproc": ccdproc.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
