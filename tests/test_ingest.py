"""Ingest: the ARCSAT night, mixed folders, re-ingest, quarantine reasons."""

from __future__ import annotations

import bz2
import gzip
import shutil
from collections import Counter

import numpy as np
import pytest
import sqlalchemy as sa
from astropy.io import fits

from darkroom.pipeline import ingest as ingest_module
from darkroom.pipeline.ingest import ingest_paths
from darkroom.repo.models import Exposure
from darkroom.repo.registry import Registry


@pytest.fixture
def registry(db_url):
    reg = Registry(db_url)
    reg.upgrade()
    yield reg
    reg.dispose()


def _light_header(**extra) -> fits.Header:
    h = fits.Header()
    h["IMAGETYP"] = "LIGHT"
    h["EXPTIME"] = 30.0
    h["FILTER"] = "V"
    h["DATE-OBS"] = "2024-03-01T05:00:00.000"
    h["XBINNING"] = 1
    h["YBINNING"] = 1
    for k, v in extra.items():
        h[k] = v
    return h


def _write(path, header=None, data=None):
    data = np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) if data is None else data
    fits.PrimaryHDU(data, header=header if header is not None else _light_header()).writeto(path)


def _rows(registry):
    with registry.session() as s:
        return s.scalars(sa.select(Exposure).order_by(Exposure.path)).all()


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_arcsat_night_counts_and_reingest_is_a_no_op(registry, arcsat_dir):
    summary = ingest_paths(registry, [arcsat_dir])
    assert summary.n_files == 96  # the four ACP .log files are not FITS and are ignored
    assert summary.quarantined == [], [(q.path.name, q.reason) for q in summary.quarantined]
    rows = _rows(registry)
    types = Counter(r.frame_type for r in rows)
    assert types == {"bias": 5, "dark": 5, "flat": 5, "light": 81}
    lights = [r for r in rows if r.frame_type == "light"]
    assert Counter(r.object for r in lights) == {"XO1-b": 80, "43Bet Com": 1}
    assert {r.filter for r in lights} == {"z"}
    assert {r.exptime_s for r in rows if r.frame_type == "dark"} == {60.0}
    assert {r.filter for r in rows if r.frame_type == "flat"} == {"z"}
    assert {r.night for r in rows} == {"2025-06-01"}
    assert all(r.state == "ok" and r.sha256 and r.size_bytes > 0 for r in rows)
    # Ingesting again registers nothing and changes no row.
    before = [(r.id, r.sha256, r.path, r.ingested_utc) for r in rows]
    again = ingest_paths(registry, [arcsat_dir])
    assert (again.n_new, again.n_known, len(again.quarantined)) == (0, 96, 0)
    assert [(r.id, r.sha256, r.path, r.ingested_utc) for r in _rows(registry)] == before


def _crash_on_bias(job):
    """An examining process that dies on the first bias frame (a reader crashing on a file)."""
    import os

    if "Bias" in job[0].name:
        os._exit(3)
    return ingest_module._examine_in_worker_real(job)


def test_arcsat_night_read_in_two_processes_gives_the_same_rows(tmp_path, arcsat_dir, monkeypatch, caplog):
    def rows_of(workers: int) -> list[tuple]:
        reg = Registry(f"sqlite:///{tmp_path / f'w{workers}.db'}")
        reg.upgrade()
        summary = ingest_paths(reg, [arcsat_dir], workers=workers)
        assert summary.n_new == 96 and summary.quarantined == []
        with reg.session() as s:
            rows = s.scalars(sa.select(Exposure).order_by(Exposure.id)).all()
            out = [(r.id, r.sha256, r.path, r.frame_type, r.exptime_s, r.mjd_mid, r.meta) for r in rows]
        reg.dispose()
        return out

    serial = rows_of(0)
    assert rows_of(2) == serial  # same rows, same ids, same order
    # a process that dies costs nothing: what it did not return is read in the driver
    monkeypatch.setattr(
        ingest_module, "_examine_in_worker_real", ingest_module._examine_in_worker, raising=False
    )
    monkeypatch.setattr(ingest_module, "_examine_in_worker", _crash_on_bias)
    (tmp_path / "w3.db").unlink(missing_ok=True)
    with caplog.at_level("WARNING", logger="darkroom.pipeline.ingest"):
        assert rows_of(3) == serial
    assert "an ingest process died" in caplog.text


def test_mixed_folder(registry, tmp_path, arcsat_dir):
    raw = tmp_path / "night with spaces"
    (raw / "sub dir").mkdir(parents=True)
    _write(raw / "plain frame.fits")
    _write(raw / "sub dir" / "b.fit", _light_header(FILTER="R"))
    gz = raw / "c.fts.gz"
    buf = raw / "tmp.fits"
    _write(buf, _light_header(FILTER="B"))
    gz.write_bytes(gzip.compress(buf.read_bytes()))
    (raw / "d.FITS.bz2").write_bytes(bz2.compress(buf.read_bytes()))
    buf.unlink()
    fits.HDUList(
        [
            fits.PrimaryHDU(header=_light_header(FILTER="I")),
            fits.CompImageHDU(np.ones((40, 30), dtype=np.int16) * 5),
        ]
    ).writeto(raw / "e.fits.fz")
    (raw / "notes.txt").write_text("not a frame")
    (raw / "guide.log").write_text("log")
    (raw / "empty.fits").write_bytes(b"")
    (raw / "junk.fit").write_bytes(b"This is not FITS at all" * 200)
    _write(raw / "no_time.fits", _light_header(**{"DATE-OBS": "not a date"}))
    fits.PrimaryHDU(np.full((10, 10), np.nan, dtype=np.float32), header=_light_header()).writeto(
        raw / "nan.fits"
    )
    fits.PrimaryHDU(header=_light_header()).writeto(raw / "headeronly.fits")
    shutil.copy(arcsat_dir / "Bias_BIN1_20250602_032138.fits.gz", raw / "copy of bias.fits.gz")

    summary = ingest_paths(registry, [raw])
    ok = {e.path.name: e.meta for e in summary.registered}
    bad = {e.path.name: e.reason for e in summary.quarantined}
    assert set(ok) == {
        "plain frame.fits",
        "b.fit",
        "c.fts.gz",
        "d.FITS.bz2",
        "e.fits.fz",
        "copy of bias.fits.gz",
    }
    assert {k: v.filter for k, v in ok.items() if k != "copy of bias.fits.gz"} == {
        "plain frame.fits": "V",
        "b.fit": "R",
        "c.fts.gz": "B",
        "d.FITS.bz2": "B",
        "e.fits.fz": "I",
    }
    assert ok["e.fits.fz"].naxis1 == 30 and ok["e.fits.fz"].naxis2 == 40
    assert ok["copy of bias.fits.gz"].frame_type == "bias"
    assert set(bad) == {"empty.fits", "junk.fit", "no_time.fits", "nan.fits", "headeronly.fits"}
    assert "empty" in bad["empty.fits"]
    assert "not a FITS" in bad["junk.fit"]
    assert "NaN" in bad["nan.fits"]
    assert "no image data" in bad["headeronly.fits"]
    assert all(r and "\n" not in r for r in bad.values())
    # Quarantined files are registered too (by checksum), with their reason.
    rows = {r.path.rsplit("/", 1)[-1]: r for r in _rows(registry)}
    assert rows["junk.fit"].state == "quarantined" and rows["junk.fit"].reason == bad["junk.fit"]
    # A second ingest of the same folder changes nothing, good or bad.
    again = ingest_paths(registry, [raw])
    assert (again.n_new, len(again.registered), len(again.quarantined)) == (0, 0, 0)
    assert again.n_known == len(ok) + len(bad) - 1 + 1  # empty.fits has a checksum too


def test_same_file_twice_under_two_names_is_one_exposure(registry, tmp_path):
    _write(tmp_path / "a.fits")
    shutil.copy(tmp_path / "a.fits", tmp_path / "a_copy.fits")
    summary = ingest_paths(registry, [tmp_path])
    assert (summary.n_new, summary.n_known) == (1, 1)
    assert len(_rows(registry)) == 1


@pytest.mark.parametrize("workers", [0, 2])  # 2: the 52 files read in two processes
def test_header_variant_sets_ingest_without_quarantine(registry, data_dir, workers):
    summary = ingest_paths(
        registry, [data_dir / "msumastro-header-variants", data_dir / "st7-ptc-linearity"], workers=workers
    )
    assert summary.quarantined == [], [(q.path.name, q.reason) for q in summary.quarantined]
    types = Counter((e.path.parent.name, e.meta.frame_type) for e in summary.registered)
    assert types[("st7-ptc-linearity", "bias")] == 3
    assert types[("st7-ptc-linearity", "flat")] == 27
    assert types[("msumastro-header-variants", "arc")] == 1  # the neon lamp frame
    by_name = {e.path.name: e.meta for e in summary.registered}
    assert by_name["flat29.5(2).FIT.gz"].exptime_s == 29.5
    assert by_name["darktest3.fit"].frame_type == "dark" and by_name["darktest3.fit"].exptime_s == 30.0


@pytest.mark.parametrize("damage", ["truncated", "bad_crc", "trailing_junk", "corrupt_deflate"])
def test_gzip_frames_read_alike_with_and_without_isal(tmp_path, monkeypatch, damage):
    """Raw gzip frames inflate with ISA-L when it is installed: the same pixels, and a damaged
    stream gets the standard library's reason (read again by it)."""
    import io
    import sys

    from darkroom.errors import BadInputError
    from darkroom.io.rawfits import read_raw

    buf = io.BytesIO()
    fits.PrimaryHDU(np.arange(64 * 80, dtype=np.uint16).reshape(64, 80)).writeto(buf)
    good = gzip.compress(buf.getvalue())
    bad = {
        "truncated": good[: len(good) // 2],
        "bad_crc": good[:-8] + bytes([good[-8] ^ 1]) + good[-7:],
        "trailing_junk": good + b"garbage!!",
        "corrupt_deflate": good[:30] + bytes(12) + good[42:],
    }[damage]
    (tmp_path / "good.fits.gz").write_bytes(good)
    (tmp_path / "bad.fits.gz").write_bytes(bad)

    def outcome():
        with pytest.raises(BadInputError) as err:
            read_raw(tmp_path / "bad.fits.gz")
        return read_raw(tmp_path / "good.fits.gz").data, str(err.value)

    import isal  # noqa: F401  (a dependency: the fast path is the one tested first)

    data_isal, reason_isal = outcome()
    monkeypatch.setitem(sys.modules, "isal", None)  # as if not installed
    data_std, reason_std = outcome()
    assert np.array_equal(data_isal, data_std) and data_std[1, 2] == 82
    assert reason_isal == reason_std
