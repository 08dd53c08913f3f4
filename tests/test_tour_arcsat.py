"""The README's tour on the ARCSAT night, darkroom.yaml untouched: init, run --ingest, report.

The repository is the session's ARCSAT one (init + ingest + calibration, made once for
the ARCSAT tests); ``darkroom run --ingest`` finds every file known and carries on. A new
user does not know about ``targets:``. The run must still make the XO-1b light
curve (OBJECT 'XO1-b' resolved through a stand-in Sesame server), draw the predicted
transit from a stand-in NASA Exoplanet Archive, end with a summary naming the report,
and the report must render in headless Chromium with the light curve and its caption.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from darkroom.cli import app

runner = CliRunner()
XO1 = (240.549333, 28.169556)
XO1B_ROW = {"pl_name": "XO-1 b", "pl_tranmid": 2456055.57566, "pl_orbper": 3.94150465, "pl_trandur": 2.93}


def _votable(row: dict) -> bytes:
    import io

    from astropy.io.votable import from_table
    from astropy.table import Table

    buf = io.BytesIO()
    from_table(Table(rows=[tuple(row.values())], names=list(row))).to_xml(buf)
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readme_tour_on_the_arcsat_night(tmp_path, arcsat_dir, arcsat_calibrated, httpserver):
    from test_report import _chromium, _run_chromium  # the report tests' browser helpers

    httpserver.expect_request("/sesame/SNV", query_string="XO-1b").respond_with_data(
        f"# XO-1b\n%J {XO1[0]:.6f} {XO1[1]:+.6f} = 16 02 11.84 +28 10 10.4\n"
    )
    httpserver.expect_request("/sesame/SNV").respond_with_data("#! *** Nothing found ***\n")
    httpserver.expect_request("/TAP/sync", method="POST").respond_with_data(
        _votable(XO1B_ROW), content_type="text/xml"
    )
    # The session's ARCSAT repository (darkroom init, ingest, calibration done: shared with the
    # other ARCSAT tests to spare CI a second calibration); the tour's run carries on from there.
    root = arcsat_calibrated[0].root
    yaml_before = (root / "darkroom.yaml").read_text()
    stand_ins = [
        "--set",
        f"names.sesame_urls=['{httpserver.url_for('/sesame/')}']",
        "--set",
        f"names.exoplanet_archive_tap={httpserver.url_for('/TAP')}",
    ]
    res = runner.invoke(app, ["run", str(root), "--ingest", str(arcsat_dir), *stand_ins])
    assert res.exit_code in (0, 2), res.output
    assert "Traceback" not in res.output
    assert (root / "darkroom.yaml").read_text() == yaml_before
    out = res.stdout
    # The target was chosen automatically, and the user was told how.
    assert "target XO1-b: OBJECT resolved by Sesame (as 'XO-1b')" in res.stderr
    lc_line = next(line for line in out.splitlines() if line.strip().startswith("XO1-b:"))
    assert "differential" in lc_line
    scatter = float(re.search(r"scatter ([0-9.]+) ppt", lc_line).group(1))
    assert scatter < 6.0, lc_line  # the issue measured 3.4 ppt differential
    report = next(line.split("report: ", 1)[1] for line in out.splitlines() if line.startswith("report: "))
    page = Path(report).read_text(encoding="utf-8")
    assert "<h3>XO1-b</h3>" in page
    caption = re.search(r"Red lines: predicted transit from NASA Exoplanet Archive: ([^<]*)", page)
    assert caption, "no predicted contact times in the report"
    mid = float(re.search(r"mid ([0-9.]+)", caption.group(1)).group(1))
    assert abs(mid - 2460828.73779) * 1440 < 1.0  # the MANIFEST's mid-transit for this night
    # 28 frames of low transparency are left out of the curve: drawn, and counted in the caption.
    assert re.search(r"; (\d+) excluded frames as grey crosses along the top", page)

    dom = _run_chromium(_chromium(), tmp_path / "profile", "--dump-dom", f"file://{report}")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    decoded = int(re.search(r'data-images-decoded="(\d+)"', body).group(1))
    total = int(re.search(r'data-images-total="(\d+)"', body).group(1))
    assert total >= 6 and decoded == total  # quality plot, masters, the light curve
    assert 'alt="light curve of XO1-b"' in dom.stdout

    # darkroom lightcurve --name with the OBJECT's own spelling, defaults from darkroom.yaml.
    res = runner.invoke(
        app, ["lightcurve", str(root), "--name", "XO1-b", "--plot", str(tmp_path / "xo1.png")]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "xo1.png").stat().st_size > 10_000
