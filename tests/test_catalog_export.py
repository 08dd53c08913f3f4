"""``darkroom catalog`` (issue 10, item 11): one image's sources as CSV, ECSV or Parquet with the
filter and zero point in the metadata."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from astropy.table import Table

from darkroom.commands.catalog import image_catalog, write_catalog
from darkroom.errors import BadInputError


def _image(tmp_path):
    prov = "p1"
    (tmp_path / "catalogs" / prov).mkdir(parents=True)
    t = Table(
        {
            "x": [10.0, 20.0, 30.0],
            "y": [5.0, 6.0, 7.0],
            "ra": [150.1, 150.2, 150.3],
            "dec": [2.1, 2.2, 2.3],
            "mag": [15.0, 16.0, 17.0],
            "mag_err": [0.01, 0.02, 0.03],
            "flags": [0, 2, 0],
            "forced": [False, False, True],
        }
    )
    t.write(tmp_path / "catalogs" / prov / "exp1_frame.phot.parquet")
    return SimpleNamespace(
        id=1,
        path="images/x/exp1_frame.fits",
        filter="r",
        photcal={
            "provenance_id": prov,
            "mag_system": "calibrated",
            "zp": 18.17,
            "zp_err": 0.0,
            "zp_source": "image unit",
        },
        astrom={"quality": "good"},
        astrom_flag="good",
        catalog_path=None,
        mjd_mid=60000.5,
    )


@pytest.mark.parametrize("suffix", [".csv", ".ecsv", ".parquet"])
def test_catalog_round_trips_with_its_zero_point(tmp_path, suffix):
    table = image_catalog(tmp_path, _image(tmp_path))
    assert table.colnames == ["ra", "dec", "x", "y", "mag", "mag_err", "flags"]
    assert len(table) == 2  # the forced (undetected) position is not a source of this image
    out = write_catalog(table, tmp_path / f"cat{suffix}")
    back = Table.read(out, format="ascii.csv", comment="#") if suffix == ".csv" else Table.read(out)
    assert np.allclose(back["mag"], [15.0, 16.0]) and list(back["flags"]) == [0, 2]
    assert np.allclose(back["x"], [10.0, 20.0])
    if suffix == ".csv":
        text = out.read_text()
        assert "# filter: r" in text and "# zero_point_mag: 18.17" in text
    else:
        assert back.meta["filter"] == "r" and back.meta["zero_point_mag"] == pytest.approx(18.17)
        assert back.meta["mag_system"] == "calibrated" and back.meta["pixel_origin"] == 0
        assert str(back["ra"].unit) == "deg"


def test_catalog_rejects_unknown_suffix(tmp_path):
    table = image_catalog(tmp_path, _image(tmp_path))
    with pytest.raises(BadInputError, match=r"csv, \.ecsv or \.parquet"):
        write_catalog(table, tmp_path / "cat.txt")
