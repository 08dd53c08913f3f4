"""darkroom.report: the HTML night report (data model, PNG plots, self-contained pages).

Pure presentation: the pipeline fills a :class:`NightReport` from the registry and
calls :func:`write_night_report` (or :func:`write_night_reports` for several nights,
which adds an ``index.html``).
"""

from darkroom.report.html import (
    night_report_filename,
    render_analysis_page,
    render_index,
    render_night_report,
    write_analysis_page,
    write_index,
    write_night_report,
    write_night_reports,
)
from darkroom.report.model import (
    FRAME_COLUMNS,
    AnalysisSummary,
    FrameStatus,
    MasterSummary,
    NightPicture,
    NightReport,
    QuarantinedFile,
    ReportConfig,
    TargetLightCurve,
    TaskFailure,
    frame_status,
)
from darkroom.report.plots import efficiency_png, lightcurve_png, quality_png, thumbnail_png

__all__ = [
    "FRAME_COLUMNS",
    "AnalysisSummary",
    "FrameStatus",
    "MasterSummary",
    "NightPicture",
    "NightReport",
    "QuarantinedFile",
    "ReportConfig",
    "TargetLightCurve",
    "TaskFailure",
    "efficiency_png",
    "frame_status",
    "lightcurve_png",
    "night_report_filename",
    "quality_png",
    "render_analysis_page",
    "render_index",
    "render_night_report",
    "thumbnail_png",
    "write_analysis_page",
    "write_index",
    "write_night_report",
    "write_night_reports",
]
