"""Survey benchmark: ZTF targets per second against a local stand-in for IRSA, and SDSS cutout
cubes per second.

The stand-in answers each request after a fixed latency (``--latency``, default 50 ms) with a
tiny reply (3 epochs for half of the targets, a header only for the others), so the ceiling is
``concurrency / latency`` targets per second: the table shows how close darkroom comes to it
(download, raw cache write, reduction, light-curve Parquet, registry rows) at 10^3 and 10^4
targets, with and without fsync of every small file (``surveys.fsync``). ``cpu ms/target`` is
darkroom's own CPU time per target: when it times the rate exceeds the cores free, the CPU and
not the concurrency limit is the bound. Cutouts: 10^3 targets on the five M2 frames of sdss-frames-m2 (read once), through
darkroom's cube (pixel copy at each band's WCS position) and through astropy's Cutout2D.

Run: .venv/bin/python bench/bench_surveys.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from astropy.table import Table
from werkzeug import Request, Response
from werkzeug.serving import make_server

from _common import max_rss_mb, print_table
from darkroom.pipeline.cutouts import run_cutouts
from darkroom.pipeline.sdss import FIELD_SURVEY, FILE_SURVEY
from darkroom.pipeline.survey_targets import import_targets
from darkroom.pipeline.ztf import run_ztf
from darkroom.repo.models import Download, Target
from darkroom.repo.registry import Registry
from darkroom.surveys.cutouts import cutout_cube
from darkroom.surveys.sdss import read_frame
from darkroom.surveys.settings import SurveysConfig
from darkroom.testing import shared_data_dir

HEADER = "oid,expid,hjd,mjd,mag,magerr,catflags,filtercode,ra,dec,exptime\n"


def _targets(n: int) -> Table:
    t = Table()
    t["name"] = [f"t{i:05d}" for i in range(n)]
    t["ra_deg"] = np.linspace(0, 359.9, n)
    t["dec_deg"] = np.arange(n) / 10000.0
    for col in ("epoch_jyear", "parallax_mas"):
        t[col] = np.nan
    t["pmra_masyr"] = 0.0
    t["pmdec_masyr"] = 0.0
    return t


def _irsa_app(latency_s: float):
    """A WSGI stand-in for IRSA: ``latency_s`` per request, 3 epochs for even targets, none for odd."""

    @Request.application
    def app(request: Request) -> Response:
        time.sleep(latency_s)
        _, ra, dec, _ = request.args["POS"].split()
        i = round(float(dec) * 10000)
        if i % 2:
            return Response(HEADER, content_type="text/csv")
        rows = "".join(
            f"{800000000 + i},{k},0,{58300 + 10 * k},{18 + 0.01 * k:.2f},0.05,0,zr,{ra},{dec},30\n"
            for k in range(3)
        )
        return Response(HEADER + rows, content_type="text/csv")

    return app


def _serve(port: int, latency_s: float) -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    make_server("127.0.0.1", port, _irsa_app(latency_s), threaded=True).serve_forever()


def bench_ztf(n: int, concurrency: int, latency_s: float, *, fsync: bool = True) -> dict:
    # the stand-in runs in its own process, as a remote archive would: it takes no CPU time
    # (GIL) from darkroom's process
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = multiprocessing.Process(target=_serve, args=(port, latency_s), daemon=True)
    server.start()
    time.sleep(1.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            reg = Registry(f"sqlite:///{root}/registry.db")
            reg.upgrade()
            import_targets(reg, _targets(n), catalog="bench")
            config = SurveysConfig.model_validate(
                {
                    "cache_dir": str(root / "cache"),
                    "fsync": fsync,
                    "ztf": {
                        "base_url": f"http://127.0.0.1:{port}",
                        "mag_band": None,
                        "http": {
                            "concurrency": concurrency,
                            "rate_per_s": 100000,
                            "timeout_s": 30,
                            "max_attempts": 2,
                        },
                    },
                }
            )
            t0, cpu0 = time.perf_counter(), time.process_time()
            report = run_ztf(root, reg, config)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            reg.dispose()
    finally:
        server.terminate()
        server.join()
    rate = n / seconds
    ceiling = concurrency / latency_s
    return {
        "stage": "ztf download+reduce",
        "size": f"{n} targets, {concurrency} in flight, fsync {'on' if fsync else 'off'}",
        "seconds": seconds,
        "targets/s": rate,
        "ceiling/s": ceiling,
        "ratio": rate / ceiling,
        "cpu ms/target": 1e3 * cpu / n,
        "peak MB": max_rss_mb(),
        "states": ",".join(f"{k}={v}" for k, v in sorted(report.counts.items())),
    }


def bench_cutouts(n: int, workers: int) -> list[dict]:
    folder = shared_data_dir() / "sdss-frames-m2"
    paths = {b: folder / f"frame-{b}-002583-2-0136.fits.bz2" for b in "ugriz"}
    t0 = time.perf_counter()
    frames = {b: read_frame(p)[:2] for b, p in paths.items()}
    t_read = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    xy = np.column_stack([rng.uniform(0, 2048, n), rng.uniform(0, 1489, n)])
    world = frames["r"][1].pixel_to_world(xy[:, 0], xy[:, 1])
    ra, dec = world.ra.deg, world.dec.deg

    t0 = time.perf_counter()
    for i in range(n):
        cutout_cube(frames, ra_deg=ra[i], dec_deg=dec[i], size=32, bands="ugriz")
    t_ours = time.perf_counter() - t0

    from astropy.coordinates import SkyCoord
    from astropy.nddata import Cutout2D

    t0 = time.perf_counter()
    for i in range(n):
        pos = SkyCoord(ra[i], dec[i], unit="deg")
        for data, wcs in frames.values():
            Cutout2D(data, pos, (32, 32), wcs=wcs, mode="partial", fill_value=np.nan)
    t_astropy = time.perf_counter() - t0

    # the whole step: registry, frame reads, FITS per target, HDF5 and index
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reg = Registry(f"sqlite:///{root}/registry.db")
        reg.upgrade()
        t = _targets(n)
        t["ra_deg"], t["dec_deg"] = ra, dec
        import_targets(reg, t, catalog="bench")
        with reg.session() as s:
            for tid in s.scalars(Target.__table__.select().with_only_columns(Target.id)):
                s.add(Download(survey=FIELD_SURVEY, key=f"bench/{tid}", target_id=tid, state="done",
                               meta={"fields": [[2583, 301, 2, 136]]}))  # fmt: skip
            for p in paths.values():
                s.add(Download(survey=FILE_SURVEY, key=p.name, state="done", path=str(p)))
        t0 = time.perf_counter()
        report = run_cutouts(root, reg, SurveysConfig(fsync=False), out_dir=root / "out", workers=workers)
        t_step = time.perf_counter() - t0
        reg.dispose()
    return [
        {
            "stage": "read 5 frames (bz2)",
            "size": "2048x1489 x5",
            "seconds": t_read,
            "per s": 5 / t_read,
            "ratio": "",
        },
        {
            "stage": "cube (darkroom)",
            "size": f"{n} x 5 x 32x32",
            "seconds": t_ours,
            "per s": n / t_ours,
            "ratio": t_astropy / t_ours,
        },
        {
            "stage": "cube (astropy Cutout2D)",
            "size": f"{n} x 5 x 32x32",
            "seconds": t_astropy,
            "per s": n / t_astropy,
            "ratio": 1.0,
        },
        {
            "stage": f"cutouts step ({workers} threads, fsync off)",
            "size": f"{report.n_written} cubes",
            "seconds": t_step,
            "per s": n / t_step,
            "ratio": "",
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^3 targets only")
    parser.add_argument("--latency", type=float, default=0.05, help="stand-in latency per request [s]")
    args = parser.parse_args()
    rows = [
        # an archive's own latency (IRSA: about a second): darkroom should sit at the ceiling
        bench_ztf(200, 4, 0.5),
        bench_ztf(500, 16, 0.5),
        # a fast stand-in: what darkroom itself costs per target
        bench_ztf(1000, 4, args.latency),
        bench_ztf(1000, 16, args.latency),
        bench_ztf(1000, 4, args.latency, fsync=False),
        bench_ztf(1000, 16, args.latency, fsync=False),
    ]
    if not args.quick:
        rows.append(bench_ztf(10000, 16, args.latency, fsync=False))
    print_table(rows)
    print()
    print_table(bench_cutouts(1000, 2))


if __name__ == "__main__":
    main()
