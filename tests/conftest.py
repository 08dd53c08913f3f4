"""Shared fixtures: the real data sets and the two registry backends."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from darkroom import _threads  # noqa: F401  (as the CLI: one BLAS thread, so in-process runs match Dask runs)
from darkroom.testing import shared_data_dir

# No test reaches the public name resolvers (automatic targets); stand-in servers still work.
os.environ.setdefault("DARKROOM_OFFLINE", "1")

PG_URL = os.environ.get("DARKROOM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real data; a missing folder is an error, never a skip."""
    return shared_data_dir()


@pytest.fixture(scope="session")
def arcsat_dir(data_dir: Path) -> Path:
    return data_dir / "arcsat-xo1b-transit"


def _postgres_available() -> bool:
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path):
    """A fresh, empty registry URL on each backend.

    PostgreSQL tests get their own schema-free database name space by using a new
    database per test, dropped afterwards. In CI the server must be there.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    if not _postgres_available():
        # The server is part of this machine (and of CI): its absence is a failure, never a skip.
        pytest.fail(
            f"PostgreSQL not reachable at {PG_URL}; start it with "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        )
    import sqlalchemy as sa

    name = f"darkroom_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base = PG_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(scope="session")
def arcsat_calibrated(tmp_path_factory, arcsat_dir):
    """A SQLite repository with the ARCSAT night ingested and calibrated (built once per session)."""
    from darkroom.facade import Repository
    from darkroom.pipeline.ingest import ingest_paths
    from darkroom.pipeline.run import section_stages
    from darkroom.pipeline.runner import run_stage

    root = tmp_path_factory.mktemp("arcsat_repo")
    repo = Repository.init(root)
    ingest_paths(repo.registry, [arcsat_dir], config=repo.config.ingest)
    reports = [run_stage(repo.registry, stage) for stage in section_stages(repo.root, repo.config, "calib")]
    yield repo, reports
    repo.close()


@pytest.fixture(scope="session")
def arcsat_masters(arcsat_dir: Path) -> dict:
    """The ARCSAT night's masters made from its raw bias, dark and z dome-flat frames by the
    algorithm functions (not the pipeline), as ``calibrate_frame`` takes them: bias, dark, flat,
    bad_pixels."""
    import glob

    import numpy as np
    from astropy.io import fits

    from darkroom.calib.badpix import build_bad_pixel_mask
    from darkroom.calib.masters import make_master_bias, make_master_dark, make_master_flat

    def read(pattern):
        return [fits.getdata(f).astype(np.float32) for f in sorted(glob.glob(str(arcsat_dir / pattern)))]

    mb = make_master_bias(read("Bias_*.fits.gz"))
    md = make_master_dark(read("Dark_*.fits.gz"), exptime_s=60.0, bias=mb)
    flat_files = sorted(glob.glob(str(arcsat_dir / "domeflat_z_*.fits.gz")))
    t_flat = fits.getheader(flat_files[0])["EXPTIME"]
    mf = make_master_flat(read("domeflat_z_*.fits.gz"), bias=mb, dark=md, exptime_s=t_flat, filter="z")
    bpm = build_bad_pixel_mask(mb.shape, dark=md.measured_data, dark_exptime_s=60.0, flat=mf.data)
    return {"bias": mb, "dark": md, "flat": mf, "bad_pixels": bpm}


@pytest.fixture(scope="session")
def arcsat_light(arcsat_dir: Path):
    """``light(index) -> (raw pixels, header, FrameMetadata)`` of the night's index-th XO-1 frame
    (in file-name order), its metadata as a profile would give it."""
    import glob

    from astropy.io import fits

    from darkroom.instruments.metadata import FrameMetadata

    paths = sorted(glob.glob(str(arcsat_dir / "XO1-b_z_*.fits.gz")))

    def light(index: int):
        with fits.open(paths[index]) as hdul:
            raw, hdr = hdul[0].data, hdul[0].header.copy()
        meta = FrameMetadata(
            profile="test",
            frame_type="light",
            instrument=hdr["INSTRUME"],
            exptime_s=hdr["EXPTIME"],
            filter=hdr["FILTER"].strip(),
            naxis1=1024,
            naxis2=1024,
        )
        return raw, hdr, meta

    return light


@pytest.fixture(scope="session")
def arcsat_images(arcsat_calibrated):
    """``(repository, extract stage, paths)``: the calibrated ARCSAT night's image files (relative
    to the repository) in the order the extract stage takes them, and that stage, whose settings
    say how they are extracted. From the registry, not from the stage's plan: the session's
    repository is shared, and another test may have extracted them already."""
    import sqlalchemy as sa

    from darkroom.pipeline.run import all_stages
    from darkroom.repo.models import Exposure, Image

    repo, _ = arcsat_calibrated
    (stage,) = [s for s in all_stages(repo.root, repo.config) if s.name == "extract"]
    with repo.registry.session() as s:
        paths = s.scalars(
            sa.select(Image.path)
            .join(Exposure, Exposure.id == Image.exposure_id)
            .where(Image.provenance_id.in_(stage.upstream), Exposure.state == "ok")
            .order_by(Image.mjd_mid, Image.id)
        ).all()
    return repo, stage, list(paths)


@pytest.fixture
def saao_frame(data_dir: Path):
    """``(raw pixels float32, header, FrameMetadata)`` of the SAAO frame (ccdproc-saao-and-sip):
    overscan and trim sections, gain and read noise from its header, no masters."""
    import numpy as np
    from astropy.io import fits

    from darkroom.instruments.metadata import FrameMetadata

    with fits.open(data_dir / "ccdproc-saao-and-sip" / "a8280271.fits") as hdul:
        raw, hdr = hdul[0].data.astype(np.float32), hdul[0].header.copy()
    meta = FrameMetadata(
        profile="test",
        frame_type="light",
        exptime_s=hdr["EXPTIME"],
        gain_e_per_adu=hdr["GAIN"],
        read_noise_e=hdr["RDNOISE"],
        overscan_section=hdr["BIASSEC"],
        trim_section=hdr["TRIMSEC"],
    )
    return raw, hdr, meta


def simulated_calibration(folder: Path, cfg):
    """A simulated night (darkroom.sim, ``cfg``) in ``folder``, its masters made by the algorithm
    functions and its light frames read as a profile would give them: ``(night, masters,
    lights)``, masters as ``calibrate_frame`` takes them, lights ``[(raw, header, FrameMetadata)]``."""
    import numpy as np
    from astropy.io import fits

    from darkroom.calib.badpix import build_bad_pixel_mask
    from darkroom.calib.masters import make_master_bias, make_master_dark, make_master_flat
    from darkroom.instruments.metadata import FrameMetadata
    from darkroom.sim import simulate_night

    night = simulate_night(folder, config=cfg)

    def read(paths):
        return [fits.getdata(p).astype(np.float32) for p in paths]

    mb = make_master_bias(read(night.raw_paths["bias"]))
    md = make_master_dark(read(night.raw_paths["dark"]), exptime_s=cfg.dark_exptime_s, bias=mb)
    mf = make_master_flat(
        read(night.raw_paths["flat"]), bias=mb, dark=md, exptime_s=cfg.flat_exptime_s, filter="r"
    )
    bpm = build_bad_pixel_mask(
        mb.shape, dark=md.measured_data, dark_exptime_s=cfg.dark_exptime_s, flat=mf.data
    )
    lights = []
    for path in night.raw_paths["light"]:
        with fits.open(path) as hdul:
            raw, hdr = hdul[0].data, hdul[0].header.copy()
        meta = FrameMetadata(
            profile="sim",
            frame_type="light",
            instrument=hdr["INSTRUME"],
            exptime_s=hdr["EXPTIME"],
            filter="r",
            naxis1=cfg.nx,
            naxis2=cfg.ny,
            gain_e_per_adu=hdr["EGAIN"],
            read_noise_e=hdr["RDNOISE"],
            saturation_adu=hdr["SATURATE"],
        )
        lights.append((raw, hdr, meta))
    return night, {"bias": mb, "dark": md, "flat": mf, "bad_pixels": bpm}, lights


@pytest.fixture(scope="session")
def simulate_calibration():
    """:func:`simulated_calibration`, for tests (``simulate_calibration(folder, cfg)``)."""
    return simulated_calibration


def _photometry_products(repo, stages) -> dict:
    """The photometry and light-curve stages' products: file bytes (Parquet, ECSV, PNG) and
    registry rows (measurement, photcal, lightcurve, transparency) without ids and timestamps."""
    import sqlalchemy as sa

    files = {}
    for stage in stages:
        for folder in ("catalogs", "lightcurves", "products"):
            for p in sorted((repo.root / folder / stage.provenance_id).rglob("*")):
                if p.is_file():
                    files[str(p.relative_to(repo.root))] = p.read_bytes()
    rows = {}
    with repo.registry.engine.connect() as conn:
        for table in ("measurement", "photcal", "lightcurve", "transparency"):
            t = sa.Table(table, sa.MetaData(), autoload_with=conn)
            cols = [c for c in t.c if c.name not in ("id", "created_utc")]
            rows[table] = sorted(repr(tuple(r)) for r in conn.execute(sa.select(*cols)))
    return {"files": files, "rows": rows}


@pytest.fixture
def photometry_before_and_after(monkeypatch):
    """``compare(repo)``: the photometry and light-curve stages forgotten and run again, first with
    the code paths they had before issue 15's changes to the stage (the reference, patched in
    here: each frame's WCS built by ``wcs_from_astrom``, ``blend_flags`` replacing its columns),
    then with the current ones; returns both products (:func:`_photometry_products`)."""
    from darkroom.phot import blend
    from darkroom.pipeline.astrometry import wcs_from_astrom
    from darkroom.pipeline.photometry import PhotometryStage
    from darkroom.pipeline.run import all_stages
    from darkroom.pipeline.runner import run_stage

    def replace_column(phot, name, values):
        phot[name] = values

    def compare(repo, extra=None) -> tuple[dict, dict]:
        """``extra(repo)``, when given, is kept with each run's products (a query's answer)."""
        by_name = {st.name: st for st in all_stages(repo.root, repo.config)}
        stages = [by_name["photometry"], by_name["lightcurves"]]
        out = []
        for reference in (True, False):
            for stage in reversed(stages):
                with repo.registry.session() as s:
                    stage.forget(s)
            with monkeypatch.context() as m:
                if reference:
                    m.setattr(
                        PhotometryStage, "_frame_wcs", lambda self, cards: wcs_from_astrom({"wcs": cards})
                    )
                    m.setattr(blend, "_set_flags", replace_column)
                for stage in stages:
                    report = run_stage(repo.registry, stage)
                    assert report.n_failed == 0, report.failures
            out.append(_photometry_products(repo, stages))
            if extra is not None:
                out[-1]["extra"] = extra(repo)
        return out[0], out[1]

    return compare
