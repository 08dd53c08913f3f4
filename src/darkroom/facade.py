"""A darkroom data repository on disk: ``darkroom.yaml``, the registry, product folders.

```
REPO/
  darkroom.yaml   every parameter, defaults filled in; the registry URL
  registry.db     SQLite by default (a PostgreSQL URL in darkroom.yaml instead)
  calib/ images/ catalogs/ lightcurves/ products/ reports/ logs/
```
This is the Python face of a repository (``darkroom.Repository(path)``); its query
methods return astropy Tables. It is a face like the command line: it sits above the
pipeline (whose light-curve queries it calls) and the registry, and nothing below
imports it.
"""

from __future__ import annotations

from pathlib import Path

from astropy.table import Table
from sqlalchemy import func, select
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from darkroom.config import CONFIG_NAME, DarkroomConfig, load_config, save_config
from darkroom.errors import ConfigError
from darkroom.repo.models import Download, Exposure, Image, Target, Task
from darkroom.repo.registry import Registry, registry_error, resolve_url

__all__ = ["PRODUCT_DIRS", "Repository"]

PRODUCT_DIRS = ("calib", "images", "catalogs", "lightcurves", "products", "reports", "logs")


def open_registry(config: DarkroomConfig, root: Path) -> Registry:
    """Connect to the configured registry and bring its schema up to date.

    Any database problem (server unreachable, database missing, bad URL) becomes a
    :class:`~darkroom.errors.RegistryError` with a one-line reason.
    """
    url = config.registry.url
    registry = None
    try:
        registry = Registry(resolve_url(url, root), echo=config.registry.echo)
        if not registry.is_current():
            registry.upgrade()
    except (SQLAlchemyError, ArgumentError, OSError) as exc:
        if registry is not None:
            registry.dispose()
        raise registry_error(exc, url) from exc
    return registry


class Repository:
    """An existing repository. Use :meth:`Repository.init` to make a new one."""

    def __init__(
        self, root: Path | str, *, db_url: str | None = None, overrides: tuple[str, ...] | list[str] = ()
    ):
        self.root = Path(root).expanduser().resolve()
        cfg_path = self.root / CONFIG_NAME
        if not cfg_path.is_file():
            raise ConfigError(
                f"{self.root} is not a darkroom repository (no {CONFIG_NAME}); run 'darkroom init' first"
            )
        overrides = list(overrides)
        if db_url:
            overrides.append(f"registry.url={db_url}")
        self.config: DarkroomConfig = load_config(cfg_path, overrides)
        self.registry = open_registry(self.config, self.root)
        #: how each automatic target was placed, and why an observed object has none
        self.target_notes: list[str] = []
        self.targets_left_out: list[str] = []
        self.apply_automatic_targets(online=False)

    def apply_automatic_targets(self, *, online: bool) -> None:
        """With no ``targets:`` in darkroom.yaml, one target per observed OBJECT (see
        :mod:`darkroom.pipeline.targets`); ``online`` lets names not yet cached go to Sesame.

        darkroom.yaml is not changed: the targets live in the configuration in memory.
        """
        from darkroom.pipeline.targets import automatic_targets

        if not self.config.names.automatic_targets:
            return
        if self.config.targets and not self.target_notes:  # the user's own list wins
            return
        found, left_out = automatic_targets(self.registry, self.root, self.config.names, online=online)
        self.config = self.config.model_copy(update={"targets": [t.target for t in found]})
        self.target_notes = [t.note for t in found]
        self.targets_left_out = left_out

    @classmethod
    def init(
        cls, root: Path | str, *, db_url: str | None = None, overrides: tuple[str, ...] | list[str] = ()
    ) -> Repository:
        """Create the folders, write ``darkroom.yaml`` and create the registry schema.

        Running it on an existing repository keeps its configuration (overrides and
        ``db_url`` are applied and saved) and brings the schema up to date.
        """
        root = Path(root).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        for sub in PRODUCT_DIRS:
            (root / sub).mkdir(exist_ok=True)
        cfg_path = root / CONFIG_NAME
        overrides = list(overrides)
        if db_url:
            overrides.append(f"registry.url={db_url}")
        config = load_config(cfg_path if cfg_path.exists() else None, overrides)
        # Reach the database before saving, so a wrong --db never lands in darkroom.yaml.
        open_registry(config, root).dispose()
        save_config(config, cfg_path)
        return cls(root)

    def path(self, relative: str | Path) -> Path:
        """Absolute path of a product recorded relative to the repository root."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def close(self) -> None:
        self.registry.dispose()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- queries ------------------------------------------------------------------
    def exposures(self, *, state: str | None = None, frame_type: str | None = None) -> Table:
        """Registered raw files as a Table (one row per exposure)."""
        cols = [
            "id",
            "path",
            "state",
            "reason",
            "frame_type",
            "filter",
            "exptime_s",
            "object",
            "night",
            "mjd_mid",
            "instrument",
            "naxis1",
            "naxis2",
            "sha256",
        ]
        stmt = select(*[getattr(Exposure, c) for c in cols]).order_by(Exposure.mjd_mid, Exposure.path)
        if state:
            stmt = stmt.where(Exposure.state == state)
        if frame_type:
            stmt = stmt.where(Exposure.frame_type == frame_type)
        with self.registry.session() as s:
            rows = s.execute(stmt).all()
        table = Table(rows=[tuple(r) for r in rows] or None, names=cols if rows else None)
        if not rows:
            table = Table(
                names=cols, dtype=[int, str, str, str, str, str, float, str, str, float, str, int, int, str]
            )
        table["exptime_s"].unit = "s"
        return table

    # -- survey light curves (darkroom.pipeline.surveys) ---------------------------
    def survey_lightcurves(
        self, name: str, *, catalog: str | None = None, survey: str | None = None
    ) -> Table:
        """Every survey light curve of a registered target, stacked in time order (the columns of
        :mod:`darkroom.analysis.lcfile` plus ``survey``, ``season`` and ``key``); empty when the
        target has none. ``name`` is the target's name in its catalogue."""
        from darkroom.pipeline.surveys import survey_lightcurves

        with self.registry.session() as s:
            return survey_lightcurves(s, self.root, name=name, catalog=catalog, survey=survey)

    # -- photometry and light curves (darkroom.pipeline.lightcurves) -------------
    def lightcurve(
        self,
        *,
        ra: float | None = None,
        dec: float | None = None,
        radius_arcsec: float | None = None,
        name: str | None = None,
        pixel: tuple[float, float] | None = None,
        frame: str | Path | None = None,
        source_id: int | None = None,
        differential: bool = False,
        comparison: list[int] | None = None,
        keep_flagged: bool | None = None,
    ) -> Table:
        """The light curve of one object: by ``ra``/``dec`` [deg], ``name``, ``pixel=(x, y)``
        (0-based) of a ``frame`` file, or ``source_id``; see
        :func:`darkroom.pipeline.lightcurves.query_lightcurve` for the columns."""
        from darkroom.pipeline.lightcurves import LightCurveContext, query_lightcurve

        ctx = LightCurveContext.from_config(self.root, self.registry, self.config)
        return query_lightcurve(
            ctx,
            ra_deg=ra,
            dec_deg=dec,
            radius_arcsec=radius_arcsec,
            name=name,
            pixel=pixel,
            frame=frame,
            source_id=source_id,
            differential=differential,
            comparison_ids=comparison,
            keep_flagged=keep_flagged,
        )

    def sources(self, *, field: str | None = None, all_provenances: bool = False) -> Table:
        """Sources (id, field, mean position, reference-frame position, epochs, mean magnitudes)
        of the current association (``all_provenances``: of every association)."""
        from darkroom.pipeline.lightcurves import LightCurveContext, source_table

        prov = None
        if not all_provenances:
            prov = LightCurveContext.from_config(self.root, self.registry, self.config).associate_provenance
        with self.registry.session() as s:
            return source_table(s, provenance_id=prov, field=field)

    def measurements(
        self,
        *,
        source_id: int | list[int] | None = None,
        image_id: int | list[int] | None = None,
        provenance_id: str | None = None,
    ) -> Table:
        """Measurements of the current photometry (or ``provenance_id``), optionally of some
        sources and/or images, in time order (columns as
        :func:`darkroom.pipeline.lightcurves.field_measurements`)."""
        from darkroom.pipeline.lightcurves import LightCurveContext, field_measurements

        if provenance_id is None:
            ctx = LightCurveContext.from_config(self.root, self.registry, self.config)
            provenance_id = ctx.photometry_provenance
        sources = [source_id] if isinstance(source_id, int) else source_id
        images = [image_id] if isinstance(image_id, int) else image_id
        with self.registry.session() as s:
            return field_measurements(s, provenance_id=provenance_id, source_ids=sources, image_ids=images)

    def status(self) -> dict:
        """Counts of exposures per state and type, images per quality and astrometry flag (with the
        poor frames and why), tasks per stage and state, and the failures."""
        with self.registry.session() as s:
            by_state = dict(s.execute(select(Exposure.state, func.count()).group_by(Exposure.state)).all())
            by_type = dict(
                s.execute(
                    select(Exposure.frame_type, func.count())
                    .where(Exposure.state == "ok")
                    .group_by(Exposure.frame_type)
                ).all()
            )
            quarantined = [
                (p, r)
                for p, r in s.execute(
                    select(Exposure.path, Exposure.reason)
                    .where(Exposure.state == "quarantined")
                    .order_by(Exposure.path)
                ).all()
            ]
            tasks = s.execute(
                select(Task.stage, Task.state, func.count()).group_by(Task.stage, Task.state)
            ).all()
            failed = s.execute(
                select(Task.stage, Task.key, Task.reason)
                .where(Task.state == "failed")
                .order_by(Task.stage, Task.key)
            ).all()
            quality = dict(
                s.execute(select(Image.quality_flag, func.count()).group_by(Image.quality_flag)).all()
            )
            astrometry = dict(
                s.execute(select(Image.astrom_flag, func.count()).group_by(Image.astrom_flag)).all()
            )
            downloads = [
                (survey, state, reason or "", n)
                for survey, state, reason, n in s.execute(
                    select(Download.survey, Download.state, Download.reason, func.count())
                    .group_by(Download.survey, Download.state, Download.reason)
                    .order_by(Download.survey, Download.state, Download.reason)
                ).all()
            ]
            n_targets = s.scalar(select(func.count()).select_from(Target)) or 0
            poor = [
                (path, (q or {}).get("poor_reason") or "")
                for path, q in s.execute(
                    select(Exposure.path, Image.quality)
                    .join(Exposure, Image.exposure_id == Exposure.id)
                    .where(Image.quality_flag == "poor")
                    .order_by(Image.mjd_mid)
                ).all()
            ]
        return {
            "images_quality": {k or "unmeasured": v for k, v in quality.items()},
            "images_astrometry": {k or "unsolved": v for k, v in astrometry.items()},
            "poor": poor,
            "exposures": by_state,
            "types": by_type,
            "quarantined": quarantined,
            "tasks": [tuple(t) for t in tasks],
            "failed": [tuple(f) for f in failed],
            "targets": n_targets,
            "downloads": downloads,
        }
