"""`darkroom report`: a night page from a real run, rendered by headless Chromium."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from darkroom.cli import app
from darkroom.pipeline.report import build_night_reports

runner = CliRunner()


@pytest.mark.slow
def test_arcsat_night_report(arcsat_calibrated, tmp_path):
    repo, _ = arcsat_calibrated
    reports = build_night_reports(repo)
    assert [r.night for r in reports] == ["2025-06-01"]
    rep = reports[0]
    assert len(rep.frames) == 81
    assert {m.kind for m in rep.masters} >= {"bias", "dark", "flat", "bpm"}
    assert all(m.thumbnail is not None and m.thumbnail.shape == (1024, 1024) for m in rep.masters)
    res = runner.invoke(app, ["report", str(repo.root), "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "night-2025-06-01.html").read_text()
    assert "XO1-b_z_20250602_041008.fits.gz" in page
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) >= 5  # quality plot + 4 masters


@pytest.mark.slow
def test_arcsat_report_renders_in_chromium(arcsat_calibrated, tmp_path):
    from test_report import _chromium, _run_chromium  # the report tests' browser helpers

    repo, _ = arcsat_calibrated
    res = runner.invoke(app, ["report", str(repo.root), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    url = (tmp_path / "out" / "night-2025-06-01.html").resolve().as_uri()
    dom = _run_chromium(_chromium(), tmp_path / "profile", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    decoded = int(re.search(r'data-images-decoded="(\d+)"', body).group(1))
    total = int(re.search(r'data-images-total="(\d+)"', body).group(1))
    assert total >= 5 and decoded == total


def test_report_reads_light_curves_from_the_registry_not_the_folder(tmp_path):
    import numpy as np
    from astropy.table import Table

    from darkroom.facade import Repository
    from darkroom.repo.models import Lightcurve, Provenance

    repo = Repository.init(tmp_path / "repo")
    folder = repo.root / "lightcurves"
    rows = []
    for prov, level in (("p-old", 1.0), ("p-new", 2.0)):
        path = folder / prov / "T-1.ecsv"
        path.parent.mkdir(parents=True)
        Table(
            {"mjd_utc": np.arange(5.0), "rel_flux": np.full(5, level), "rel_flux_err": np.full(5, 0.01)}
        ).write(path)
        rows.append((prov, path))
    Table({"mjd_utc": [1.0], "rel_flux": [9.0], "rel_flux_err": [0.1]}).write(
        folder / "stray.ecsv"
    )  # no row: not a product
    with repo.registry.session() as s:
        for prov, path in rows:
            s.add(Provenance(id=prov, stage="lightcurves", params={}, code_version="0", upstream=[]))
            s.flush()
            s.add(
                Lightcurve(
                    provenance_id=prov,
                    key="darkroom:T-1:F",
                    survey="darkroom",
                    object_id="T-1",
                    n_points=5,
                    path=str(path.relative_to(repo.root)),
                )
            )
    (newest,) = build_night_reports(repo, nights=["2025-01-01"])
    assert [(lc.name, float(lc.table["rel_flux"][0])) for lc in newest.light_curves] == [("T-1", 2.0)]
    (chosen,) = build_night_reports(repo, nights=["2025-01-01"], provenances=["p-old"])
    assert [float(lc.table["rel_flux"][0]) for lc in chosen.light_curves] == [1.0]
    repo.close()
