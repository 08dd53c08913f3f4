"""darkroom.io.tables writes what astropy writes, and reads it back with units and meta."""

from __future__ import annotations

from collections import OrderedDict

import astropy.units as u
import numpy as np
from astropy.table import MaskedColumn, Table
from astropy.time import Time

from darkroom.io.tables import read_parquet, read_parquet_columns, read_parquet_meta, write_parquet


def _table() -> Table:
    t = Table()
    t["id"] = np.arange(1, 6, dtype=np.int64)
    t["x"] = np.linspace(0.5, 4.5, 5)
    t["x"].unit = u.pix
    t["x"].description = "0-based pixel x: 'quoted', long enough to wrap " + "word " * 30
    t["flux"] = np.array([1.0, np.nan, 3.0, np.inf, -2.0]).astype(">f8")  # big-endian, as from FITS
    t["flux"].unit = u.adu
    t["ratio"] = np.ones(5)
    t["ratio"].unit = u.dimensionless_unscaled
    t["sharp"] = np.array([True, False, False, True, False])
    t["band"] = np.array(["g", "r", "ip", "z", ""])
    t["n"] = np.arange(5, dtype=np.int32)
    t.meta.update(
        {
            "shape": (1024, 2048),
            "psf_fwhm_pix": 3.4105839167969716,
            "nan": float("nan"),
            "quality": {"n_stars": 15, "fwhm_pix": np.float64(2.5), "note": None},
            "radii": [1.0, 2.5],
            "nested": OrderedDict([("b", 1), ("a", [1, 2])]),
        }
    )
    return t


def test_files_are_byte_identical_to_astropys(tmp_path):
    t = _table()
    t.write(tmp_path / "astropy.parquet", format="parquet")
    write_parquet(t, tmp_path / "ours.parquet")
    assert (tmp_path / "ours.parquet").read_bytes() == (tmp_path / "astropy.parquet").read_bytes()


def test_astropy_reads_units_descriptions_and_meta(tmp_path):
    t = _table()
    path = write_parquet(t, tmp_path / "t.parquet")
    back = Table.read(path)
    assert back.colnames == t.colnames
    for name in t.colnames:
        assert back[name].unit == t[name].unit
        assert back[name].description == t[name].description
        assert np.array_equal(np.asarray(back[name]), np.asarray(t[name]), equal_nan=name != "band")
    assert back.meta["shape"] == (1024, 2048)
    assert back.meta["quality"] == {"n_stars": 15, "fwhm_pix": 2.5, "note": None}
    assert np.isnan(back.meta["nan"])


def test_read_parquet_and_its_quick_forms(tmp_path):
    t = _table()
    path = write_parquet(t, tmp_path / "t.parquet")
    back = read_parquet(path)
    assert back.colnames == t.colnames
    assert back["x"].unit == u.pix and back["x"].description == t["x"].description
    assert back["ratio"].unit is None  # '' as before: no unit
    assert back.meta == {}
    assert np.array_equal(back["flux"], t["flux"], equal_nan=True)
    assert list(back["band"]) == list(t["band"])
    meta = read_parquet_meta(path)
    assert read_parquet(path, meta=True).meta == meta
    assert meta["psf_fwhm_pix"] == 3.4105839167969716
    assert list(meta["nested"]) == ["b", "a"]
    n, cols = read_parquet_columns(path, ("x", "sharp", "absent"))
    assert n == 5 and list(cols) == ["x", "sharp"]
    assert np.array_equal(cols["sharp"], t["sharp"])
    assert read_parquet(path, ["n"]).colnames == ["n"]


def test_other_columns_go_through_astropy(tmp_path):
    t = Table()
    t["time"] = Time([60000.0, 60000.5], format="mjd", scale="tdb")
    t["flux"] = MaskedColumn([1.0, 2.0], mask=[False, True], unit=u.adu)
    path = write_parquet(t, tmp_path / "mixed.parquet")
    back = Table.read(path)
    assert isinstance(back["time"], Time) and back["time"].scale == "tdb"
    assert back["flux"].mask.tolist() == [False, True]


def test_empty_table(tmp_path):
    t = _table()[:0]
    path = write_parquet(t, tmp_path / "empty.parquet")
    assert len(Table.read(path)) == 0
    assert read_parquet_columns(path, ("x",))[0] == 0
