"""Ingest never stops on bad input: hundreds of mutated FITS files, each quarantined with a reason.

Two generators: a seeded one that makes 240 files which are certainly unusable
(every one must be quarantined), and a hypothesis one that flips, inserts and cuts
bytes anywhere (each file must come out either registered or quarantined with a
one-line reason, and no exception may escape).
"""

from __future__ import annotations

import gzip
import random

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darkroom.pipeline.ingest import ingest_paths
from darkroom.repo.registry import Registry
from darkroom.repo.store import sha256_file


def _good_bytes(filter_name: str = "V", object_name: str = "field") -> bytes:
    h = fits.Header()
    h["IMAGETYP"] = "LIGHT"
    h["EXPTIME"] = 20.0
    h["FILTER"] = filter_name
    h["DATE-OBS"] = "2024-03-01T05:00:00.000"
    h["XBINNING"] = 1
    h["OBJECT"] = object_name
    data = (np.arange(24 * 40, dtype=np.uint16).reshape(24, 40) + 1000).astype(np.uint16)
    hdu = fits.PrimaryHDU(data, header=h)
    from io import BytesIO

    buf = BytesIO()
    hdu.writeto(buf)
    return buf.getvalue()


GOOD = _good_bytes()
HEADER_END = GOOD.index(b"END" + b" " * 77) + 80


def _replace_card(blob: bytes, key: str, new_card: str) -> bytes:
    i = blob.index(key.ljust(8).encode())
    return blob[:i] + new_card.ljust(80)[:80].encode() + blob[i + 80 :]


def _unusable(rng: random.Random, kind: str, good: bytes) -> bytes:
    """A file made from ``good`` that no careful pipeline may register as a usable frame."""
    header_end = good.index(b"END" + b" " * 77) + 80
    if kind == "truncate_data":
        return good[: rng.randrange(header_end, len(good) - 2880)]
    if kind == "truncate_header":
        return good[: rng.randrange(1, header_end - 80)]
    if kind == "empty":
        return b""
    if kind == "random_bytes":
        return bytes(rng.randrange(256) for _ in range(rng.choice([10, 2880, 5000])))
    if kind == "gzip_truncated":
        z = gzip.compress(good)
        return z[: rng.randrange(10, len(z) - 8)]
    if kind == "bad_simple":
        return _replace_card(good, "SIMPLE", "SIMPLE  = " + rng.choice(["'yes'", "F", "12", "ZZZ"]))
    if kind == "bad_naxis":
        return _replace_card(good, "NAXIS1", f"NAXIS1  = {rng.choice(['-4', 'abc', '99999999', '0'])}")
    if kind == "bad_bitpix":
        return _replace_card(good, "BITPIX", f"BITPIX  = {rng.choice(['13', 'x', '-12'])}")
    if kind == "no_end":
        return good[: header_end - 80] + b" " * 80 + good[header_end:]
    if kind == "bad_date":
        return _replace_card(
            good, "DATE-OBS", "DATE-OBS= '" + rng.choice(["yesterday", "2024-13-45", "", "T"]) + "'"
        )
    if kind == "no_date":
        return _replace_card(good, "DATE-OBS", "COMMENT removed")
    if kind == "bad_exptime":
        return _replace_card(good, "EXPTIME", "EXPTIME = " + rng.choice(["'long'", "-5.0", "'NaN'"]))
    if kind == "no_type":
        return _replace_card(good, "IMAGETYP", "COMMENT removed")
    if kind == "nan_data":
        h = fits.Header.fromstring(good[:header_end].decode())
        from io import BytesIO

        buf = BytesIO()
        fits.PrimaryHDU(np.full((8, 8), np.nan, dtype=np.float32), header=h).writeto(buf)
        return buf.getvalue()
    raise ValueError(kind)


KINDS = [
    "truncate_data",
    "truncate_header",
    "empty",
    "random_bytes",
    "gzip_truncated",
    "bad_simple",
    "bad_naxis",
    "bad_bitpix",
    "no_end",
    "bad_date",
    "no_date",
    "bad_exptime",
    # "no_type" is no longer unusable: the frame type is inferred (OBJECT names a target: light)
    "nan_data",
]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_240_unusable_files_are_all_quarantined_and_good_ones_registered(tmp_path, db_url, workers):
    rng = random.Random(20261121)
    raw = tmp_path / "raw"
    raw.mkdir()
    expected_bad = {}
    for i in range(240):
        kind = KINDS[i % len(KINDS)]
        blob = _unusable(rng, kind, _good_bytes("V", f"fuzz field {i}"))
        name = f"mut_{i:03d}.fits" + (".gz" if kind == "gzip_truncated" else "")
        (raw / name).write_bytes(blob)
        expected_bad[name] = kind
    for i, f in enumerate("UBVRI"):
        (raw / f"good_{i}.fits").write_bytes(_good_bytes(f))
    reg = Registry(db_url)
    reg.upgrade()
    summary = ingest_paths(reg, [raw], workers=workers)  # 2: read in two processes
    reg.dispose()
    assert {e.path.name for e in summary.registered} == {f"good_{i}.fits" for i in range(5)}
    quarantined = {e.path.name: e.reason for e in summary.quarantined}
    # Identical mutated files (every empty file, say) share a checksum and are registered
    # once; every distinct unusable content must be quarantined.
    first_of_checksum = {}
    for name in sorted(expected_bad):
        first_of_checksum.setdefault(sha256_file(raw / name), name)
    missing = set(first_of_checksum.values()) - set(quarantined)
    assert not missing, {m: expected_bad[m] for m in sorted(missing)[:10]}
    assert len(quarantined) == len(first_of_checksum) >= 220
    for name, reason in quarantined.items():
        assert reason and "\n" not in reason and len(reason) < 300, (name, expected_bad[name], reason)
    assert summary.n_files == 245 and summary.n_known == 240 - len(first_of_checksum)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete", "cut"]),
            st.integers(0, len(GOOD) - 1),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_random_byte_edits_never_escape(tmp_path_factory, edits):
    blob = bytearray(GOOD)
    for op, pos, value in edits:
        pos = min(pos, max(len(blob) - 1, 0))
        if op == "flip" and blob:
            blob[pos] ^= value or 1
        elif op == "insert":
            blob[pos:pos] = bytes([value])
        elif op == "delete" and blob:
            del blob[pos]
        elif op == "cut":
            blob = blob[:pos]
    raw = tmp_path_factory.mktemp("fuzz")
    (raw / "x.fits").write_bytes(bytes(blob))
    (raw / "good.fits").write_bytes(_good_bytes("R"))
    reg = Registry(f"sqlite:///{raw / 'reg.db'}")
    reg.upgrade()
    summary = ingest_paths(reg, [raw])
    reg.dispose()
    names = {e.path.name for e in summary.registered} | {e.path.name for e in summary.quarantined}
    assert "good.fits" in {e.path.name for e in summary.registered} or bytes(blob) == _good_bytes("R")
    assert "x.fits" in names or summary.n_known == 1
    for e in summary.quarantined:
        assert e.reason and "\n" not in e.reason
