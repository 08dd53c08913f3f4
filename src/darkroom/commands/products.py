"""``darkroom products REPO [--image FILE]``: where every product of a frame is.

One block per raw file: its state (and quarantine reason), the calibrated image and the
source catalogue of every provenance and the masters it went into; then the light-curve
files of the repository. Paths are printed whole (absolute), one per line, so they can be copied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from darkroom.errors import DarkroomError

__all__ = ["register"]

console = Console()
err_console = Console(stderr=True)


def _say(text: str) -> None:
    console.print(text, soft_wrap=True, markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``products`` command to ``app``."""

    @app.command()
    def products(
        repo: Annotated[Path, typer.Argument(help="repository folder")],
        image: Annotated[
            str | None,
            typer.Option("--image", help="only raw files whose name or path contains this text"),
        ] = None,
        db: Annotated[str | None, typer.Option("--db", help="registry URL overriding darkroom.yaml")] = None,
    ) -> None:
        """Where each product of a frame is: calibrated image, catalogue, masters, light curves."""
        from sqlalchemy import select

        from darkroom.facade import Repository
        from darkroom.repo.models import Calib, CalibInput, Exposure, Image, SourceCatalog

        try:
            r = Repository(repo, db_url=db)
        except DarkroomError as exc:
            err_console.print(f"[bold red]error:[/] {escape(exc.reason)}", soft_wrap=True)
            raise typer.Exit(1) from None
        with r.registry.session() as s:
            stmt = select(Exposure).order_by(Exposure.mjd_mid, Exposure.path)
            if image:
                stmt = stmt.where(Exposure.path.contains(image))
            exposures = s.scalars(stmt).all()
            if not exposures:
                r.close()
                err_console.print(
                    f"[bold red]error:[/] no registered file matches {escape(image or '')!s}".rstrip(),
                    soft_wrap=True,
                )
                raise typer.Exit(1)
            ids = [e.id for e in exposures]
            images: dict[int, list[Image]] = {}
            for im in s.scalars(select(Image).where(Image.exposure_id.in_(ids)).order_by(Image.id)):
                images.setdefault(im.exposure_id, []).append(im)
            catalogs: dict[int, list[str]] = {}
            for image_id, path in s.execute(
                select(SourceCatalog.image_id, SourceCatalog.path)
                .join(Image, Image.id == SourceCatalog.image_id)
                .where(Image.exposure_id.in_(ids))
                .order_by(SourceCatalog.id)
            ):
                catalogs.setdefault(image_id, []).append(path)
            masters: dict[int, list[Calib]] = {}
            for eid, calib in s.execute(
                select(CalibInput.exposure_id, Calib)
                .join(Calib, Calib.id == CalibInput.calib_id)
                .where(CalibInput.exposure_id.in_(ids))
            ):
                masters.setdefault(eid, []).append(calib)
        lightcurves = sorted((r.root / "lightcurves").rglob("*.ecsv"))
        for e in exposures:
            state = e.state if e.state != "quarantined" else f"quarantined: {e.reason}"
            _say(f"{e.path}")
            _say(f"  {e.frame_type or '?'} {e.filter or ''} night {e.night or '?'}; {state}")
            for im in images.get(e.id, []):
                _say(f"  calibrated image: {r.path(im.path)}  (provenance {im.provenance_id[:12]})")
                for path in catalogs.get(im.id, []):  # one per extract provenance
                    _say(f"  source catalogue: {r.path(path)}")
            for calib in masters.get(e.id, []):
                _say(f"  went into master {calib.kind}: {r.path(calib.path) if calib.path else '-'}")
        if lightcurves and any(images.values()):
            _say("light curves of the repository:")
            for lc in lightcurves:
                _say(f"  {lc}")
        r.close()
