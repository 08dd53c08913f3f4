"""Night report: data model, PNG plots, HTML rendering and escaping, files, and a headless-Chromium check."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from astropy.table import MaskedColumn, Table
from astropy.time import Time
from PIL import Image

from darkroom.errors import BadInputError
from darkroom.report import (
    FrameStatus,
    MasterSummary,
    NightReport,
    ReportConfig,
    TargetLightCurve,
    frame_status,
    lightcurve_png,
    quality_png,
    render_night_report,
    thumbnail_png,
    write_index,
    write_night_report,
    write_night_reports,
)
from darkroom.report.model import frame_times_mjd
from darkroom.report.plots import downsample_block_mean, empty_panel_text
from darkroom.timeseries.quality import LightCurveFlag

HOSTILE = "<script>document.body.setAttribute('data-pwned','1')</script>"
HOSTILE_IMG = "\"><img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">"
N_FRAMES = 12


def _frames(n: int = N_FRAMES) -> Table:
    rng = np.random.default_rng(7)
    t0 = datetime(2025, 6, 2, 3, 0, 0)
    return Table(
        {
            "image_id": np.arange(1, n + 1),
            "file": [f"raw/xo1_{i:03d}.fits" for i in range(n)],
            "time_utc": [(t0 + timedelta(minutes=5 * i)).isoformat() for i in range(n)],
            "filter": ["V" if i % 2 else "R" for i in range(n)],
            "exptime_s": np.full(n, 60.0),
            "fwhm_arcsec": rng.normal(2.0, 0.2, n),
            "ellipticity": rng.uniform(0.0, 0.1, n),
            "sky_adu": rng.normal(1000.0, 30.0, n),
            "n_sources": rng.integers(100, 300, n),
            "zero_point": rng.normal(22.0, 0.05, n),
            "zero_point_err": np.full(n, 0.01),
            "astrom_rms_arcsec": rng.normal(0.2, 0.02, n),
            "astrom_flag": ["good"] * (n - 2) + ["failed", "marginal"],
            "quality_flag": ["good"] * (n - 3) + ["poor", "good", "good"],
            "state": ["done"] * (n - 1) + ["failed"],
        }
    )


def _lightcurve(n: int = 60) -> Table:
    rng = np.random.default_rng(3)
    flags = np.zeros(n, np.int64)
    flags[5] = int(LightCurveFlag.LOW_TRANSPARENCY)
    return Table(
        {
            "bjd_tdb": 2460828.6 + np.arange(n) * 2.0 / 1440.0,
            "rel_flux": 1.0 + rng.normal(0.0, 0.003, n),
            "rel_flux_err": np.full(n, 0.003),
            "flags": flags,
            "ensemble_flux": 1e5 + rng.normal(0.0, 500.0, n),
        }
    )


def make_report(*, reason: str = "no stars detected", night: str = "2025-06-01") -> NightReport:
    rng = np.random.default_rng(11)
    return NightReport(
        night,
        "/data/arcsat",
        frames=_frames(),
        masters=[
            (
                "bias",
                "bias-2025-06-01",
                11,
                {"median_adu": 1000.2, "rms_adu": 8.1},
                rng.normal(0, 1, (300, 400)),
            ),
        ],
        failures=[("calibrate", "exposure 17", reason)],
        quarantined=[("raw/bad.fits", "no image data in any HDU")],
        light_curves=[("XO-1", _lightcurve())],
        summary={"target": "XO-1", "transit depth": 0.0171},
        generated_utc=datetime(2025, 6, 2, 12, 0, tzinfo=UTC),
        software_version="0.1.0",
    )


class _Tags(HTMLParser):
    """Collects start tags with their attributes, and the text of <script> and <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.raw: dict[str, list[str]] = {"script": [], "style": []}
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in = tag if tag in self.raw else None

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in:
            self.raw[self._in].append(data)

    def of(self, name: str) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.tags if tag == name]


def _parse(text: str) -> _Tags:
    parser = _Tags()
    parser.feed(text)
    return parser


def _png_of_data_uri(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    img = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :])))
    img.load()
    return img


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# -- model ----------------------------------------------------------------------------------


def test_frame_times_accept_iso_datetime_time_and_missing():
    # Known answer: 2000-01-01T12:00:00 UTC is MJD 51544.5 (the J2000 epoch, in UTC here).
    frames = Table(
        {
            "time_utc": np.array(
                [
                    "2000-01-01T12:00:00",
                    "2000-01-01 13:00:00+01:00",
                    datetime(2000, 1, 1, 12, 0),
                    datetime(2000, 1, 1, 13, 0, tzinfo=UTC),
                    None,
                    "not a time",
                ],
                dtype=object,
            )
        }
    )
    mjd = frame_times_mjd(frames)
    np.testing.assert_allclose(mjd[:4], [51544.5, 51544.5, 51544.5, 51544.5 + 1 / 24], atol=1e-9)
    assert np.isnan(mjd[4:]).all()
    as_time = Table({"time_utc": Time(["2000-01-01T12:00:00", "2000-01-02T00:00:00"], scale="utc")})
    np.testing.assert_allclose(frame_times_mjd(as_time), [51544.5, 51545.0], atol=1e-9)


def test_frame_status_rules():
    frames = Table(
        {
            "state": ["done", "quarantined", "done", "done", "done", None],
            "quality_flag": ["good", "good", "poor", "good", "good", None],
            "astrom_flag": ["good", "good", "good", "failed", "marginal", None],
        }
    )
    assert [frame_status(frames, i) for i in range(len(frames))] == [
        FrameStatus.OK,
        FrameStatus.FAILED,
        FrameStatus.POOR,
        FrameStatus.POOR,
        FrameStatus.WARN,
        FrameStatus.OK,
    ]


def test_model_rejects_bad_inputs():
    with pytest.raises(BadInputError, match="file name"):
        NightReport("../etc", "/repo")
    with pytest.raises(BadInputError, match="2-D"):
        MasterSummary("bias", "b", 3, {}, np.zeros(10))
    with pytest.raises(BadInputError, match="no time column"):
        TargetLightCurve("x", Table({"rel_flux": [1.0], "rel_flux_err": [0.1]}))
    with pytest.raises(BadInputError, match="rel_flux_err"):
        TargetLightCurve("x", Table({"mjd_utc": [1.0], "rel_flux": [1.0]}))
    with pytest.raises(BadInputError, match="astropy Table"):
        NightReport("n1", "/repo", frames=[{"file": "a"}])


def test_model_fills_missing_frame_columns_without_touching_input():
    frames = Table({"file": ["a.fits"], "fwhm_arcsec": [2.5]})
    report = NightReport("n1", "/repo", frames=frames)
    assert frames.colnames == ["file", "fwhm_arcsec"]
    assert {"time_utc", "zero_point", "state", "astrom_rms_arcsec"} <= set(report.frames.colnames)


# -- plots ----------------------------------------------------------------------------------


def test_downsample_block_mean_known_answer():
    image = np.arange(20, dtype=float).reshape(5, 4)  # rows 0..4, values 4*y + x
    image[0, 0] = np.nan
    small = downsample_block_mean(image, max_pix=2)  # factor ceil(5/2) = 3 -> (2, 2)
    assert small.shape == (2, 2)
    # Block (0,0): rows 0-2, cols 0-2 without the NaN: 1,2,4,5,6,8,9,10 -> mean 45/8.
    assert small[0, 0] == pytest.approx(45 / 8)
    # Block (0,1): rows 0-2, col 3 only (partial): 3, 7, 11.
    assert small[0, 1] == pytest.approx(7.0)
    # Block (1,1): rows 3-4, col 3: 15, 19.
    assert small[1, 1] == pytest.approx(17.0)
    all_nan = downsample_block_mean(np.full((4, 4), np.nan), max_pix=2)
    assert np.isnan(all_nan).all()


def test_thumbnail_size_orientation_and_nan():
    image = np.zeros((600, 900))
    image[:50, :] = 100.0  # rows 0..49 bright: the bottom of the picture (FITS order)
    image[300:, 880:] = np.nan
    png = _png(thumbnail_png(image, max_pix=300))
    assert png.shape[:2] == (200, 300)  # factor 3
    assert png[-1, 150].mean() > 200  # bottom row bright
    assert png[0, 10].mean() < 60  # top row dark
    r, g, b = png[5, 299].astype(int)  # top right: NaN region -> dark red
    assert r > g + 40 and r > b + 40
    flat = _png(thumbnail_png(np.ones((20, 20)), max_pix=64))  # constant image must not fail
    assert flat.shape[:2] == (20, 20)


def test_pngs_are_deterministic_and_have_no_metadata():
    report = make_report()
    for make in (
        lambda: quality_png(report.frames),
        lambda: thumbnail_png(report.masters[0].thumbnail),
        lambda: lightcurve_png(report.light_curves[0]),
    ):
        first, second = make(), make()
        assert first == second
        assert first.startswith(b"\x89PNG")
        assert b"tEXt" not in first and b"tIME" not in first


def _red_pixels(png: bytes) -> int:
    rgb = _png(png).astype(int)
    return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())


def test_quality_plot_marks_poor_frames_in_red():
    frames = _frames()
    clean = frames.copy()
    clean["quality_flag"] = "good"
    clean["astrom_flag"] = "good"
    clean["state"] = "done"
    assert _red_pixels(quality_png(clean)) == 0  # two filters: blue and green, nothing red
    assert _red_pixels(quality_png(frames)) > 100


def test_an_empty_zero_point_panel_says_why():
    frames = _frames()
    frames["zero_point"] = np.full(len(frames), np.nan)
    reason = "filter R has no column in the reference catalogue: instrumental magnitudes"
    frames["zero_point_reason"] = [reason] * (len(frames) - 1) + ["no photometry for this frame yet"]
    text = empty_panel_text(frames, "zero_point")
    assert text.startswith(f"no values: {reason}") and f"({len(frames) - 1} of {len(frames)} frames)" in text
    assert empty_panel_text(frames, "sky_adu") == "no values"  # no reasons recorded for that column
    assert quality_png(frames)[:8] == b"\x89PNG\r\n\x1a\n"


def test_quality_plot_needs_a_time():
    frames = Table({"time_utc": np.array([None, None], dtype=object), "fwhm_arcsec": [1.0, 2.0]})
    with pytest.raises(BadInputError, match="time_utc"):
        quality_png(frames)


def test_lightcurve_png_with_mjd_and_no_ensemble():
    lc = TargetLightCurve(
        "var",
        Table(
            {
                "mjd_utc": 60828.1 + np.arange(30) / 1440.0,
                "rel_flux": np.ones(30),
                "rel_flux_err": np.full(30, 0.01),
            }
        ),
    )
    img = _png(lightcurve_png(lc, bin_minutes=5.0, dpi=80))
    assert img.shape[:2] == (int(5.5 * 80), int(9.0 * 80))


# -- HTML -----------------------------------------------------------------------------------


def test_render_shows_every_section():
    report = make_report()
    text = render_night_report(report)
    tags = _parse(text)
    images = tags.of("img")
    assert len(images) == 3  # quality plot, light curve, master thumbnail
    sizes = [_png_of_data_uri(img["src"]).size for img in images]
    assert sizes[0] == (900, 900)  # quality plot 9x9 in at 100 dpi
    assert sizes[2] == (200, 150)  # thumbnail 400x300 block-averaged by 2
    rows = re.findall(r"<tr( class=\"(\w+)\")?><td", text.split('id="frames"')[1].split("</table>")[0])
    assert len(rows) == N_FRAMES
    assert [cls for _, cls in rows].count("poor") == 2
    assert [cls for _, cls in rows].count("failed") == 1
    assert "2025-06-02 03:55:00" in text
    for expected in (
        "XO-1",
        "transit depth",
        "0.0171",
        "bias-2025-06-01",
        "median_adu",
        "no image data in any HDU",
    ):
        assert expected in text
    assert "raw/bad.fits" in text and "exposure 17" in text


def test_render_is_deterministic():
    assert render_night_report(make_report()) == render_night_report(make_report())


def test_page_is_self_contained_with_csp_hashes_that_match():
    text = render_night_report(make_report())
    tags = _parse(text)
    for name in ("link", "iframe", "object", "embed", "base"):
        assert not tags.of(name)
    for _tag, attrs in tags.tags:
        for key in ("src", "href"):
            if attrs.get(key) is not None:
                assert attrs[key].startswith("data:image/png;base64,")
    assert "http://" not in text and "https://" not in text
    csp = next(a["content"] for a in tags.of("meta") if a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and "img-src data:" in csp
    for kind in ("script", "style"):
        (body,) = tags.raw[kind]
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"{kind}-src 'sha256-{digest}'" in csp


def test_hostile_strings_are_escaped():
    report = make_report(reason=HOSTILE)
    report.quarantined.append(type(report.quarantined[0])(HOSTILE_IMG, HOSTILE))
    report.summary[HOSTILE] = HOSTILE_IMG
    report.masters.append(MasterSummary("flat<b>", HOSTILE_IMG, 2, {HOSTILE: "<i>x</i>"}, None, HOSTILE))
    for column, row, value in (("file", 0, HOSTILE_IMG), ("filter", 1, "<b>V")):
        report.frames[column] = report.frames[column].astype(object)
        report.frames[column][row] = value
    text = render_night_report(report)
    tags = _parse(text)
    assert len(tags.of("script")) == 1  # ours only
    assert len(tags.of("img")) == 3  # no injected image
    assert not any("onerror" in attrs for _tag, attrs in tags.tags)
    assert not tags.of("b") and not tags.of("i")
    assert (
        "&lt;script&gt;document.body.setAttribute(&#x27;data-pwned&#x27;,&#x27;1&#x27;)&lt;/script&gt;"
        in text
    )
    assert "&quot;&gt;&lt;img src=x onerror=" in text


def test_masked_and_missing_values_render_blank():
    frames = Table(
        {
            "file": ["a.fits", "b.fits"],
            "time_utc": np.array([datetime(2025, 6, 2, 4, 0), None], dtype=object),
            "fwhm_arcsec": MaskedColumn([2.345, 0.0], mask=[False, True]),
            "zero_point": [np.nan, 21.5],
            "state": ["done", "quarantined"],
        }
    )
    text = render_night_report(NightReport("n2", "/repo", frames=frames))
    table = text.split('id="frames"')[1].split("</table>")[0]
    assert "2.35" in table and "21.500" in table and "nan" not in table.lower()
    assert "2025-06-02 04:00:00" in table
    assert table.count('class="failed"') == 1


def test_empty_report_renders():
    text = render_night_report(NightReport("empty", "/repo"))
    assert "No frames." in text and "No light curves" in text and "No failed tasks." in text
    assert "<img" not in text


def test_write_night_report_index_and_duplicates(tmp_path):
    # One full night, two empty ones: this test is about files and links.
    reports = [
        make_report(night="2025-06-01"),
        NightReport("2025-06-03", "/r"),
        NightReport("2025-06-02", "/r"),
    ]
    paths = write_night_reports(reports, tmp_path / "reports", config=ReportConfig(plot_dpi=60))
    assert [p.name for p in paths] == [
        "night-2025-06-01.html",
        "night-2025-06-03.html",
        "night-2025-06-02.html",
    ]
    assert sorted(q.name for q in (tmp_path / "reports").iterdir()) == [
        "index.html",
        "night-2025-06-01.html",
        "night-2025-06-02.html",
        "night-2025-06-03.html",
    ]  # no temporary files left
    index = (tmp_path / "reports" / "index.html").read_text()
    hrefs = [a["href"] for a in _parse(index).of("a")]
    assert hrefs == ["night-2025-06-03.html", "night-2025-06-02.html", "night-2025-06-01.html"]
    other = write_index(paths[:1], tmp_path)
    assert [a["href"] for a in _parse(other.read_text()).of("a")] == ["reports/night-2025-06-01.html"]
    single = write_night_report(NightReport("2025-07-01", "/repo"), tmp_path / "one")
    assert [q.name for q in single.parent.iterdir()] == ["night-2025-07-01.html"]
    with pytest.raises(BadInputError, match="twice"):
        write_night_reports([NightReport("n1", "/r"), NightReport("n1", "/r")], tmp_path / "dup")


# -- headless Chromium ------------------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _chromium() -> str:
    """The Chromium binary; its absence fails the test (CI installs the Debian package)."""
    candidates = [os.environ.get("DARKROOM_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"]
    for name in candidates:
        if name and (found := shutil.which(name)):
            return found
    pytest.fail(
        "headless Chromium is needed to check the night report: "
        "`apt-get update && apt-get install -y chromium` (or set DARKROOM_CHROMIUM)"
    )


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile.mkdir()
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_report_renders_in_headless_chromium(tmp_path):
    binary = _chromium()
    report = make_report(reason=HOSTILE)
    report.quarantined.append(type(report.quarantined[0])(HOSTILE_IMG, "hostile file name"))
    page = write_night_report(report, tmp_path / "out")
    url = page.resolve().as_uri()

    dom = _run_chromium(binary, tmp_path / "p1", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body is not None, dom.stdout[:500]
    decoded = re.search(r'data-images-decoded="(\d+)"', body.group(0))
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    assert decoded and total, f"the page script did not run: {body.group(0)}"
    assert int(total.group(1)) == 3
    assert int(decoded.group(1)) == 3  # every image decoded (naturalWidth > 0)
    assert "data-pwned" not in dom.stdout.split("<body", 1)[1].split(">", 1)[0]
    assert "&lt;script&gt;" in dom.stdout  # the hostile reason is shown as text

    shot = tmp_path / "shot.png"
    run = _run_chromium(binary, tmp_path / "p2", f"--screenshot={shot}", "--window-size=1200,3000", url)
    assert run.returncode == 0, run.stderr[-2000:]
    rgb = np.asarray(Image.open(shot).convert("RGB"))
    assert rgb.shape[:2] == (3000, 1200)
    colours = np.unique(rgb.reshape(-1, 3)[::7], axis=0)
    assert len(colours) > 100  # plots, thumbnail noise and highlighted rows, not a blank page
    background = np.array([247, 248, 250])  # body background #f7f8fa
    assert (np.abs(rgb.astype(int) - background).sum(axis=2) > 30).mean() > 0.05
