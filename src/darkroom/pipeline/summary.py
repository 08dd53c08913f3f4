"""The end-of-run summary: what a night gave, in a dozen lines a person reads.

Frames in (by type, quarantined), frames calibrated, poor frames by reason, failed
units by stage and reason, the light curves made with their point-to-point scatter,
the report written, the log file, and the commands to run next. Built from the
registry and the light-curve files, so it says the same after a resumed run as after
an uninterrupted one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from darkroom.pipeline.runner import StageReport

__all__ = ["LightCurveLine", "RunSummary", "print_run_summary", "run_summary"]


@dataclass(frozen=True)
class LightCurveLine:
    """One light-curve file: its target, points and point-to-point scatter [ppt of the median]."""

    target: str
    path: Path
    n_points: int
    scatter_ppt: float
    column: str  # rel_flux (differential) or flux


@dataclass
class RunSummary:
    """What a repository holds after a run (see :func:`run_summary`)."""

    root: Path
    frames: dict[str, int] = field(default_factory=dict)  # usable frames by type
    n_quarantined: int = 0
    n_calibrated: int = 0
    poor: Counter = field(default_factory=Counter)  # reason -> frames
    failed: Counter = field(default_factory=Counter)  # (stage, reason) -> units
    lightcurves: list[LightCurveLine] = field(default_factory=list)
    nothing_made: list[str] = field(default_factory=list)  # why a stage made nothing
    report: Path | None = None
    log_file: Path | None = None
    n_hidden_warnings: int = 0


def _short_reason(reason: str, limit: int = 90) -> str:
    text = " ".join((reason or "no reason recorded").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scatter(path: Path) -> LightCurveLine | None:
    from astropy.table import Table

    from darkroom.timeseries import point_to_point_scatter

    try:
        lc = Table.read(path)
    except Exception:
        return None
    column = "rel_flux" if "rel_flux" in lc.colnames else "flux" if "flux" in lc.colnames else None
    if column is None or len(lc) < 2:
        return LightCurveLine(path.stem, path, len(lc), float("nan"), column or "-")
    flux = np.asarray(lc[column], dtype=float)
    flux = flux[np.isfinite(flux)]
    if len(flux) < 2:
        return LightCurveLine(path.stem, path, len(lc), float("nan"), column)
    scatter = 1e3 * point_to_point_scatter(flux) / abs(float(np.median(flux)))
    target = str(lc.meta.get("target") or lc.meta.get("name") or path.stem)
    return LightCurveLine(target, path, len(lc), float(scatter), column)


def run_summary(repo, reports: Sequence[StageReport] = ()) -> RunSummary:
    """Summarise a repository (a :class:`darkroom.facade.Repository`) after a run of ``reports``."""
    st = repo.status()
    out = RunSummary(root=repo.root)
    out.frames = dict(st.get("types") or {})
    out.n_quarantined = int((st.get("exposures") or {}).get("quarantined", 0))
    out.n_calibrated = int(sum((st.get("images_quality") or {}).values()))
    for _path, reason in st.get("poor") or []:
        out.poor[_short_reason(reason)] += 1
    for stage, _key, reason in st.get("failed") or []:
        out.failed[(stage, _short_reason(reason))] += 1
    lc_reports = [r for r in reports if r.stage == "lightcurves"]
    folders = [repo.root / "lightcurves" / r.provenance_id for r in lc_reports]
    if not lc_reports:  # a run that stopped earlier: the newest light curves there are
        folders = sorted((repo.root / "lightcurves").glob("*/"), key=lambda p: p.stat().st_mtime)[-1:]
    for folder in folders:
        for path in sorted(folder.glob("*.ecsv")):
            line = _scatter(path)
            if line is not None:
                out.lightcurves.append(line)
    return out


def print_run_summary(summary: RunSummary, console: Console, *, next_commands: bool = True) -> None:
    """Print the summary (plain lines: readable in a terminal, a cron mail and a log)."""

    def say(text: str) -> None:
        console.print(text, soft_wrap=True, markup=False, highlight=False)

    n_in = sum(summary.frames.values())
    types = ", ".join(f"{n} {t}" for t, n in sorted(summary.frames.items())) or "none"
    say("")
    say(f"frames in: {n_in} usable ({types}); {summary.n_quarantined} quarantined")
    n_poor = sum(summary.poor.values())
    say(f"calibrated: {summary.n_calibrated} light frames; poor: {n_poor}")
    for reason, n in summary.poor.most_common(6):
        say(f"  {n:4d} poor: {reason}")
    if len(summary.poor) > 6:
        say(f"  ({len(summary.poor) - 6} more reasons: darkroom status)")
    n_failed = sum(summary.failed.values())
    say(f"failed: {n_failed} units")
    for (stage, reason), n in summary.failed.most_common(6):
        say(f"  {n:4d} {stage}: {reason}")
    if summary.lightcurves:
        say(f"light curves: {len(summary.lightcurves)}")
        for lc in summary.lightcurves:
            kind = "differential" if lc.column == "rel_flux" else "absolute"
            scatter = f"{lc.scatter_ppt:.1f} ppt" if np.isfinite(lc.scatter_ppt) else "-"
            say(f"  {lc.target}: {lc.n_points} points, {kind}, scatter {scatter}  {lc.path}")
    else:
        say("light curves: none")
    for why in summary.nothing_made:
        say(f"  {why}")
    if summary.report is not None:
        say(f"report: {summary.report}")
    if summary.log_file is not None:
        hidden = (
            f" ({summary.n_hidden_warnings} repeated warnings there)" if summary.n_hidden_warnings else ""
        )
        say(f"details: {summary.log_file}{hidden}")
    if next_commands:
        root = summary.root
        say("next:")
        say(f"  darkroom status {root}")
        if summary.lightcurves:
            say(f"  darkroom lightcurve {root} --name {summary.lightcurves[0].target} --plot lc.png")
        if summary.report is None:
            say(f"  darkroom report {root}")
        if n_failed:
            say(f"  darkroom run {root} --retry-failed")
