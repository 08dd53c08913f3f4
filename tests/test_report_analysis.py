"""The analysis page of the report: given survey light curves searched with injections, the
report folder gets analysis.html (what was searched and found, the efficiency curve as an
embedded PNG) linked from index.html, with the numbers of the searched-epoch histograms."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import xarray as xr
from PIL import Image
from typer.testing import CliRunner

from darkroom.cli import app
from darkroom.facade import Repository
from darkroom.pipeline.report import analysis_summaries, write_reports
from darkroom.testing import shared_data_dir

NONVAR = sorted((shared_data_dir() / "lightcurve-known-answers" / "nonvariable-ztf").glob("*.csv"))


def test_analysis_page_with_the_efficiency_curve(tmp_path):
    runner = CliRunner()
    root = tmp_path / "repo"
    assert runner.invoke(app, ["init", str(root)]).exit_code == 0
    res = runner.invoke(app, ["lightcurves", "import", str(root), *map(str, NONVAR[:2]), "--survey", "ztf"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["analyze", str(root), "--injections", "6"])
    assert res.exit_code == 0, res.output
    with Repository(root) as repo:
        (summary,) = analysis_summaries(repo)
        paths = write_reports(repo)
    ds = xr.load_dataset(root / summary.histograms, engine="h5netcdf")
    assert summary.n_lightcurves == int(ds["n_lightcurves"].sum()) == 2
    assert summary.n_epochs == int(ds["n_epochs"].sum()) > 100
    assert int(summary.n_injected.sum()) == 12 and summary.n_detections == 0
    page, index = paths[-2], paths[-1]
    assert page.name == "analysis.html" and index.name == "index.html"
    assert 'href="analysis.html"' in index.read_text()
    html = page.read_text()
    assert f"Analysis {summary.provenance_id}" in html and "12 / " in html
    (png,) = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB"))
    assert img.shape == (420, 650, 3) and len(np.unique(img.reshape(-1, 3), axis=0)) > 20
