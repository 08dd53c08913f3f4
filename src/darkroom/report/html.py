"""Self-contained HTML night reports.

One page per night: headline figures, the quality-against-time plot and the light
curves, the frame table (poor and failed frames highlighted), the masters with
thumbnails, then failed tasks and quarantined files with their reasons. The page
has no external resource: PNGs are base64 ``data:`` URIs, CSS and the one small
script are inline, and a Content-Security-Policy forbids anything else (the
script is allowed by its SHA-256, so injected markup could not run even if it
slipped past escaping). Every text from the data is escaped with :func:`html.escape`.

The script sets ``data-images-decoded`` and ``data-images-total`` on ``<body>``
after the page has loaded (the number of ``<img>`` with a decoded bitmap), which a
headless browser can read back to check the page.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import math
import os
from collections.abc import Iterable, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import quote

from astropy.time import Time

from darkroom.errors import BadInputError, DarkroomError
from darkroom.io.atomic import atomic_write_text
from darkroom.report.model import (
    FRAME_COLUMNS,
    AnalysisSummary,
    FrameStatus,
    NightReport,
    ReportConfig,
    cell,
    float_column,
    frame_status,
    frame_times_mjd,
)
from darkroom.report.plots import efficiency_png, lightcurve_png, quality_png, thumbnail_png

__all__ = [
    "night_report_filename",
    "render_analysis_page",
    "render_index",
    "render_night_report",
    "write_analysis_page",
    "write_index",
    "write_night_report",
    "write_night_reports",
]

log = logging.getLogger(__name__)

_CSS = """
:root { --ok: #ffffff; --poor: #fff0c2; --failed: #f9d0d4; --warn: #fffbe6; --line: #d0d4da; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232b;
       margin: 0 auto; max-width: 1280px; padding: 1.2em 1.6em 3em; background: #f7f8fa; }
h1 { margin: 0 0 .2em; font-size: 1.7em; }
h2 { margin: 1.6em 0 .5em; padding-bottom: .2em; border-bottom: 2px solid var(--line); font-size: 1.25em; }
h3 { margin: 1em 0 .3em; font-size: 1.05em; }
.meta { color: #5a6470; margin: 0 0 1em; }
.meta span { margin-right: 1.5em; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: .6em; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: .5em .8em; }
.card .label { color: #5a6470; font-size: .85em; }
.card .value { font-size: 1.35em; font-weight: 600; overflow-wrap: anywhere; }
.card.alert { border-color: #d9534f; background: #fdf0f0; }
figure { margin: .6em 0; background: #fff; border: 1px solid var(--line); border-radius: 6px;
         padding: .5em; display: inline-block; max-width: 100%; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #5a6470; font-size: .9em; margin-top: .3em; }
table { border-collapse: collapse; background: #fff; margin: .4em 0; font-size: .9em; }
th, td { border: 1px solid var(--line); padding: .25em .5em; vertical-align: top; }
th { background: #eef1f5; text-align: left; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.time { white-space: nowrap; font-variant-numeric: tabular-nums; }
td.reason { max-width: 60em; overflow-wrap: anywhere; }
tr.poor td { background: var(--poor); }
tr.failed td { background: var(--failed); }
tr.warn td { background: var(--warn); }
.legend span { display: inline-block; padding: 0 .6em; margin-right: .6em; border: 1px solid var(--line); }
.legend .poor { background: var(--poor); } .legend .failed { background: var(--failed); }
.legend .warn { background: var(--warn); }
.thumb { width: 160px; image-rendering: pixelated; }
.flag { color: #b02a37; font-weight: 600; }
.none { color: #5a6470; font-style: italic; }
.stats { margin: 0; padding: 0; list-style: none; font-size: .9em; }
.scroll { overflow-x: auto; max-width: 100%; }
footer { margin-top: 3em; color: #5a6470; font-size: .85em; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, decoded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { decoded++; }
  }
  document.body.setAttribute("data-images-decoded", String(decoded));
  document.body.setAttribute("data-images-total", String(images.length));
});
"""

_INDEX_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232b;
       margin: 0 auto; max-width: 900px; padding: 1.5em; }
li { margin: .2em 0; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { text-align: left; padding: .15em .8em .15em 0; }
img { max-width: 100%; }
"""

#: Number formats of the frame-table columns.
_FORMATS: dict[str, str] = {
    "exptime_s": "{:.4g}",
    "fwhm_arcsec": "{:.2f}",
    "ellipticity": "{:.3f}",
    "sky_adu": "{:.1f}",
    "n_sources": "{:d}",
    "zero_point": "{:.3f}",
    "zero_point_err": "{:.3f}",
    "astrom_rms_arcsec": "{:.3f}",
}


def _sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _csp(css: str, script: str | None) -> str:
    script_src = _sha256_source(script) if script is not None else "'none'"
    return (
        "default-src 'none'; img-src data:; "
        f"style-src {_sha256_source(css)}; script-src {script_src}; base-uri 'none'; form-action 'none'"
    )


def _e(value: Any) -> str:
    """Escaped text of a value (quotes too, so it is safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _png_img(png: bytes, *, alt: str, css_class: str | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    cls = f' class="{_e(css_class)}"' if css_class else ""
    return f'<img{cls} alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _format_number(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.4g}"
        return f"{value:.6g}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _format_time(value: Any, mjd: float) -> str:
    if not math.isfinite(mjd):
        return "" if value is None else str(value)
    return Time(mjd, format="mjd", scale="utc").to_datetime().strftime("%Y-%m-%d %H:%M:%S")


def _format_cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    fmt = _FORMATS.get(column)
    if fmt is not None:
        try:
            number = int(value) if fmt == "{:d}" else float(value)
            return fmt.format(number)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def _median(values: Iterable[float]) -> float | None:
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return None
    n = len(finite)
    return finite[n // 2] if n % 2 else 0.5 * (finite[n // 2 - 1] + finite[n // 2])


def _headline(report: NightReport) -> str:
    frames = report.frames
    status = [frame_status(frames, i) for i in range(len(frames))]
    n_poor = sum(s == FrameStatus.POOR for s in status)
    n_failed = sum(s == FrameStatus.FAILED for s in status)
    cards: list[tuple[str, str, bool]] = [
        ("frames", str(len(frames)), False),
        ("poor frames", str(n_poor), n_poor > 0),
        ("failed frames", str(n_failed), n_failed > 0),
        ("masters", str(len(report.masters)), False),
        ("failed tasks", str(len(report.failures)), bool(report.failures)),
        ("quarantined files", str(len(report.quarantined)), bool(report.quarantined)),
        ("light curves", str(len(report.light_curves)), False),
    ]
    fwhm = _median(float_column(frames, "fwhm_arcsec").tolist())
    if fwhm is not None:
        cards.append(("median FWHM [arcsec]", f"{fwhm:.2f}", False))
    rms = _median(float_column(frames, "astrom_rms_arcsec").tolist())
    if rms is not None:
        cards.append(("median astrom rms [arcsec]", f"{rms:.3f}", False))
    out = ['<div class="cards">']
    for label, value in report.summary.items():
        out.append(
            f'<div class="card"><div class="label">{_e(label)}</div>'
            f'<div class="value">{_e(_format_number(value))}</div></div>'
        )
    for label, value, alert in cards:
        cls = "card alert" if alert else "card"
        out.append(
            f'<div class="{cls}"><div class="label">{_e(label)}</div><div class="value">{_e(value)}</div></div>'
        )
    out.append("</div>")
    return "\n".join(out)


def _plots(report: NightReport, config: ReportConfig) -> str:
    out = []
    mjd = frame_times_mjd(report.frames)
    if len(report.frames) and any(math.isfinite(m) for m in mjd):
        png = quality_png(report.frames, title=f"Night {report.night}", dpi=config.plot_dpi)
        out.append(
            "<figure>"
            + _png_img(
                png, alt=f"FWHM, sky, zero point and astrometric rms against time, night {report.night}"
            )
            + "<figcaption>Image quality against time; poor and failed frames circled in red.</figcaption>"
            "</figure>"
        )
    else:
        out.append('<p class="none">No frame with a time: no quality plot.</p>')
    out.append('<h2 id="lightcurves">Light curves</h2>')
    if not report.light_curves:
        out.append('<p class="none">No light curves this night.</p>')
    for lc in report.light_curves:
        out.append(f"<h3>{_e(lc.name)}</h3>")
        try:
            png = lightcurve_png(lc, bin_minutes=config.lightcurve_bin_minutes, dpi=config.plot_dpi)
        except DarkroomError as err:
            out.append(f'<p class="none">{_e(err)}</p>')
            continue
        out.append(
            "<figure>"
            + _png_img(png, alt=f"light curve of {lc.name}")
            + f"<figcaption>{len(lc.table)} epochs; {config.lightcurve_bin_minutes:g}-minute bins; "
            "flagged epochs as grey crosses"
            + (
                f"; {len(lc.excluded_times)} excluded frames as grey crosses along the top"
                if getattr(lc, "excluded_times", ())
                else ""
            )
            + "."
            + _contacts_caption(lc)
            + "</figcaption></figure>"
        )
    return "\n".join(out)


def _contacts_caption(lc) -> str:
    """The predicted transit times drawn on the plot, in words (BJD_TDB [d])."""
    contacts = getattr(lc, "contacts", None)
    if not contacts:
        return ""
    parts = [f"{k} {contacts[k]:.4f}" for k in ("ingress", "mid", "egress") if k in contacts]
    source = getattr(lc, "contacts_source", "") or "a published ephemeris"
    return f" Red lines: predicted transit from {_e(source)}: {', '.join(parts)} BJD_TDB."


def _pictures(report: NightReport) -> str:
    """Coadds and colour composites of the night (nothing when there are none)."""
    if not report.pictures:
        return ""
    out = ['<h2 id="coadds">Coadds</h2>']
    for pic in report.pictures:
        out.append(
            "<figure>"
            + _png_img(pic.png, alt=pic.title)
            + f"<figcaption><b>{_e(pic.title)}</b> {_e(pic.caption)}</figcaption></figure>"
        )
    return "\n".join(out)


def _frame_table(report: NightReport) -> str:
    frames = report.frames
    if len(frames) == 0:
        return '<p class="none">No frames.</p>'
    mjd = frame_times_mjd(frames)
    names = [name for name, _ in FRAME_COLUMNS]
    extra = [c for c in frames.colnames if c not in names]
    header = [label for _, label in FRAME_COLUMNS] + extra
    out = [
        '<p class="legend">Row colours: <span class="poor">poor quality or astrometry failed</span>'
        '<span class="warn">marginal astrometry</span><span class="failed">failed or quarantined</span></p>',
        '<div class="scroll"><table id="frames"><thead><tr>',
        "".join(f"<th>{_e(h)}</th>" for h in header),
        "</tr></thead><tbody>",
    ]
    order = sorted(range(len(frames)), key=lambda i: (not math.isfinite(mjd[i]), mjd[i], i))
    for i in order:
        status = frame_status(frames, i)
        cls = f' class="{status}"' if status != FrameStatus.OK else ""
        cells = []
        for column in names + extra:
            value = cell(frames, column, i)
            if column == "time_utc":
                cells.append(f'<td class="time">{_e(_format_time(value, mjd[i]))}</td>')
                continue
            text = _format_cell(column, value)
            numeric = column in _FORMATS or isinstance(value, int | float)
            cells.append(f'<td class="num">{_e(text)}</td>' if numeric else f"<td>{_e(text)}</td>")
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _masters(report: NightReport, config: ReportConfig) -> str:
    if not report.masters:
        return '<p class="none">No master calibrations this night.</p>'
    out = [
        '<div class="scroll"><table id="masters"><thead><tr><th>thumbnail</th><th>kind</th><th>name</th>'
        "<th>inputs</th><th>statistics</th><th>flag</th></tr></thead><tbody>"
    ]
    for master in report.masters:
        if master.thumbnail is not None:
            png = thumbnail_png(
                master.thumbnail, max_pix=config.thumbnail_max_pix, mask=master.kind in ("bpm", "mask")
            )
            thumb = _png_img(png, alt=f"{master.kind} {master.name}", css_class="thumb")
        else:
            thumb = '<span class="none">no thumbnail</span>'
        stats = "".join(
            f"<li>{_e(key)} = {_e(_format_number(value))}</li>"
            for key, value in master.stats.items()
            if value is not None  # an unmeasured statistic is left out, not printed as None
        )
        flag = f'<span class="flag">{_e(master.flag)}</span>' if master.flag else ""
        cls = ' class="poor"' if master.flag else ""
        out.append(
            f"<tr{cls}><td>{thumb}</td><td>{_e(master.kind)}</td><td>{_e(master.name)}</td>"
            f'<td class="num">{_e(master.n_inputs)}</td><td><ul class="stats">{stats}</ul></td>'
            f'<td class="reason">{flag}</td></tr>'
        )
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _problems(report: NightReport) -> str:
    out = ['<h3 id="failures">Failed tasks</h3>']
    if report.failures:
        out.append('<div class="scroll"><table><thead><tr><th>stage</th><th>unit</th><th>reason</th></tr>')
        out.append("</thead><tbody>")
        out.extend(
            f'<tr class="failed"><td>{_e(f.stage)}</td><td>{_e(f.unit)}</td>'
            f'<td class="reason">{_e(f.reason)}</td></tr>'
            for f in report.failures
        )
        out.append("</tbody></table></div>")
    else:
        out.append('<p class="none">No failed tasks.</p>')
    out.append('<h3 id="quarantine">Quarantined files</h3>')
    if report.quarantined:
        out.append('<div class="scroll"><table><thead><tr><th>file</th><th>reason</th></tr></thead><tbody>')
        out.extend(
            f'<tr class="failed"><td>{_e(q.file)}</td><td class="reason">{_e(q.reason)}</td></tr>'
            for q in report.quarantined
        )
        out.append("</tbody></table></div>")
    else:
        out.append('<p class="none">No quarantined files.</p>')
    return "\n".join(out)


def _page(title: str, css: str, body: str, *, script: str | None) -> str:
    script_tag = f"<script>{script}</script>" if script is not None else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_csp(css, script))}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{css}</style>\n{script_tag}\n</head>\n"
        f"{body}\n</html>\n"
    )


def render_night_report(report: NightReport, *, config: ReportConfig | None = None) -> str:
    """The HTML text of one night's report (self-contained, UTF-8).

    Parameters
    ----------
    report
        What to show.
    config
        Thumbnail size, light-curve bin width, plot resolution; defaults when None.
    """
    config = config or ReportConfig()
    generated = report.generated_utc.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    body = "\n".join(
        [
            "<body>",
            f"<header><h1>darkroom night report: {_e(report.night)}</h1>",
            '<p class="meta">'
            f"<span>repository: <code>{_e(report.repository)}</code></span>"
            f"<span>generated: {_e(generated)}</span>"
            f"<span>darkroom {_e(report.software_version)}</span></p></header>",
            '<h2 id="summary">Summary</h2>',
            _headline(report),
            '<h2 id="quality">Image quality</h2>',
            _plots(report, config),
            _pictures(report),
            f'<h2 id="frames-table">Frames ({len(report.frames)})</h2>',
            _frame_table(report),
            f'<h2 id="masters-table">Master calibrations ({len(report.masters)})</h2>',
            _masters(report, config),
            '<h2 id="problems">Failures and quarantine</h2>',
            _problems(report),
            f"<footer>darkroom {_e(report.software_version)}; night {_e(report.night)}; {_e(generated)}</footer>",
            "</body>",
        ]
    )
    return _page(f"darkroom night {report.night}", _CSS, body, script=_SCRIPT)


def night_report_filename(night: str) -> str:
    """File name of a night's report: ``night-<night>.html``."""
    return f"night-{night}.html"


def write_night_report(
    report: NightReport, out_dir: str | os.PathLike[str], *, config: ReportConfig | None = None
) -> Path:
    """Render ``report`` and write it atomically to ``out_dir/night-<night>.html``; returns the path."""
    path = Path(out_dir) / night_report_filename(report.night)
    atomic_write_text(path, render_night_report(report, config=config))
    log.info("night report %s written to %s", report.night, path)
    return path


def _night_of(path: Path) -> str:
    stem = path.stem
    return stem[len("night-") :] if stem.startswith("night-") else stem


def render_index(
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    analysis: str | os.PathLike[str] | None = None,
) -> str:
    """HTML listing the night reports at ``paths`` (newest night first), linked relative to
    ``out_dir``, and the analysis page ``analysis`` when there is one."""
    out_dir = Path(out_dir)
    entries = sorted((Path(p) for p in paths), key=lambda p: _night_of(p), reverse=True)
    items = []
    for path in entries:
        href = Path(os.path.relpath(Path(path).resolve(), out_dir.resolve())).as_posix()
        items.append(f'<li><a href="{_e(quote(href))}">{_e(_night_of(path))}</a></li>')
    listing = "<ul>\n" + "\n".join(items) + "\n</ul>" if items else '<p class="none">No night reports.</p>'
    extra = ""
    if analysis is not None:
        href = Path(os.path.relpath(Path(analysis).resolve(), out_dir.resolve())).as_posix()
        extra = (
            f'\n<h2>Analysis</h2>\n<p><a href="{_e(quote(href))}">searches, detections and efficiency</a></p>'
        )
    body = f"<body>\n<h1>darkroom night reports</h1>\n{listing}{extra}\n</body>"
    return _page("darkroom night reports", _INDEX_CSS, body, script=None)


def write_index(
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    analysis: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``out_dir/index.html`` listing the night reports at ``paths`` (and the analysis page);
    returns its path."""
    path = Path(out_dir) / "index.html"
    atomic_write_text(path, render_index(paths, out_dir, analysis=analysis))
    return path


def render_analysis_page(summaries: Sequence[AnalysisSummary], *, dpi: int = 100) -> str:
    """One page for the analyses: what was searched, what was found, and the efficiency curve of
    each (the recovered fraction of injected events against their expected S/N)."""
    parts = ["<body>", "<h1>darkroom analysis</h1>"]
    if not summaries:
        parts.append('<p class="none">No analysis yet: run darkroom analyze.</p>')
    for sm in summaries:
        rows = [
            ("light curves searched", f"{sm.n_lightcurves:d}"),
            ("epochs searched", f"{sm.n_epochs:d}"),
            ("time searched [d]", f"{sm.days_searched:.0f}"),
            ("real detections", f"{sm.n_detections:d}"),
            ("detection threshold [S/N]", f"{sm.snr_threshold:g}"),
            ("injected / recovered", f"{int(sm.n_injected.sum()):d} / {int(sm.n_recovered.sum()):d}"),
            ("50 % efficiency at [S/N]", f"{sm.snr50:.2f}" if math.isfinite(sm.snr50) else "n/a"),
            ("histograms (netCDF)", sm.histograms or "n/a"),
        ]
        table = "\n".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
        alt = f"efficiency against expected S/N, analysis {sm.provenance_id}"
        parts += [
            f"<h2>Analysis {_e(sm.provenance_id)}</h2>",
            f"<table>\n{table}\n</table>",
            _png_img(efficiency_png(sm, dpi=dpi), alt=alt),
        ]
    parts.append("</body>")
    return _page("darkroom analysis", _INDEX_CSS, "\n".join(parts), script=None)


def write_analysis_page(
    summaries: Sequence[AnalysisSummary], out_dir: str | os.PathLike[str], *, dpi: int = 100
) -> Path:
    """Write ``out_dir/analysis.html`` (see :func:`render_analysis_page`); returns its path."""
    path = Path(out_dir) / "analysis.html"
    atomic_write_text(path, render_analysis_page(summaries, dpi=dpi))
    return path


def write_night_reports(
    reports: Sequence[NightReport], out_dir: str | os.PathLike[str], *, config: ReportConfig | None = None
) -> list[Path]:
    """Write one page per night, plus ``index.html`` when there are several nights.

    Returns the night pages' paths (in the order of ``reports``); the index, when
    written, is ``out_dir/index.html``.
    """
    nights = [r.night for r in reports]
    if len(set(nights)) != len(nights):
        raise BadInputError(f"the same night appears twice among the reports: {sorted(nights)}")
    paths = [write_night_report(r, out_dir, config=config) for r in reports]
    if len(paths) > 1:
        write_index(paths, out_dir)
    return paths
