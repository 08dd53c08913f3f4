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
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from darkroom.config import CONFIG_NAME, DarkroomConfig, load_config, save_config
from darkroom.errors import ConfigError
from darkroom.repo.models import Download, Exposure, Image, Target, Task
from darkroom.repo.registry import Registry, registry_error, resolve_url

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = ["PRODUCT_DIRS", "Repository"]

PRODUCT_DIRS = ("calib", "images", "catalogs", "lightcurves", "products", "reports", "logs")


def open_registry(config: DarkroomConfig, root: Path, *, upgrade: bool = True) -> Registry:
    """Connect to the configured registry and (``upgrade``) bring its schema up to date.

    Any database problem (server unreachable, database missing, bad URL) becomes a
    :class:`~darkroom.errors.RegistryError` with a one-line reason.
    """
    url = config.registry.url
    registry = None
    try:
        registry = Registry(resolve_url(url, root), echo=config.registry.echo)
        if upgrade and not registry.is_current():
            registry.upgrade()
        else:
            registry.revision()  # connects: a bad URL or a server that is down fails here, in one line
    except (SQLAlchemyError, ArgumentError, OSError) as exc:
        if registry is not None:
            registry.dispose()
        raise registry_error(exc, url) from exc
    return registry


class Repository:
    """An existing repository. Use :meth:`Repository.init` to make a new one."""

    def __init__(
        self,
        root: Path | str,
        *,
        db_url: str | None = None,
        overrides: tuple[str, ...] | list[str] = (),
        upgrade: bool = True,
    ):
        """Open a repository; a registry made by an older release is backed up and upgraded
        (``upgrade=False`` leaves it as it is, for :meth:`upgrade` to do)."""
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
        self.backup_path: Path | None = None
        self.registry = open_registry(self.config, self.root, upgrade=False)
        if upgrade and not self.registry.is_current():
            self.upgrade()
        #: how each automatic target was placed, and why an observed object has none
        self.target_notes: list[str] = []
        self.targets_left_out: list[str] = []
        self.apply_automatic_targets(online=False)

    def upgrade(self, *, backup: bool = True) -> Path | None:
        """Bring the registry to the newest schema, backing it up first (into ``REPO/backups``).

        Returns the backup's path (None for a new, empty registry or ``backup=False``).
        Every row stays reachable: products the old schema kept on the Image row move to
        their tables, keyed by the provenance that made them.
        """
        import logging

        if self.registry.is_current():
            return None
        old = self.registry.revision()
        if backup and old is not None:
            self.backup_path = self.registry.backup(self.root / "backups")
        try:
            self.registry.upgrade()
        except (SQLAlchemyError, ArgumentError, OSError) as exc:
            raise registry_error(exc, self.config.registry.url) from exc
        if old is not None:
            logging.getLogger(__name__).warning(
                "registry upgraded from revision %s to %s%s",
                old,
                self.registry.head_revision(),
                f"; the old one is saved in {self.backup_path}" if self.backup_path else "",
            )
        return self.backup_path

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
        # Reach the database before saving, so a wrong --db never lands in darkroom.yaml. A new
        # registry gets its schema here; one made by an older release is left for the constructor,
        # which backs it up before upgrading it.
        registry = open_registry(config, root, upgrade=False)
        try:
            if registry.revision() is None:
                registry.upgrade()
        except (SQLAlchemyError, ArgumentError, OSError) as exc:
            raise registry_error(exc, config.registry.url) from exc
        finally:
            registry.dispose()
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
        from astropy.table import Table

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

    # -- survey light curves (darkroom.pipeline.survey_targets) ---------------------------
    def survey_lightcurves(
        self,
        name: str,
        *,
        catalog: str | None = None,
        survey: str | None = None,
        provenance: str | None = None,
    ) -> Table:
        """Every survey light curve of a registered target, stacked in time order (the columns of
        :mod:`darkroom.analysis.lcfile` plus ``survey``, ``season`` and ``key``); empty when the
        target has none. ``name`` is the target's name in its catalogue.

        ``provenance`` names the provenance to read (``darkroom status`` lists them); by default
        the survey stages' under the current configuration."""
        from darkroom.pipeline.survey_targets import survey_lightcurves

        current = self.stage_provenances()
        with self.registry.session() as s:
            return survey_lightcurves(
                s,
                self.root,
                name=name,
                catalog=catalog,
                survey=survey,
                provenance=provenance,
                current=current,
            )

    # -- photometry and light curves (darkroom.pipeline.queries) -------------
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
        provenance: str | None = None,
    ) -> Table:
        """The light curve of one object: by ``ra``/``dec`` [deg], ``name``, ``pixel=(x, y)``
        (0-based) of a ``frame`` file, or ``source_id``; see
        :func:`darkroom.pipeline.queries.query_lightcurve` for the columns.

        ``provenance`` names the photometry provenance to read (``darkroom status`` lists
        them); by default the current configuration's."""
        from darkroom.pipeline.queries import LightCurveContext, query_lightcurve

        ctx = LightCurveContext.from_config(self.root, self.registry, self.config)
        if provenance is not None:
            with self.registry.session() as s:
                ctx = ctx.with_photometry(s, provenance)
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

    def sources(
        self, *, field: str | None = None, all_provenances: bool = False, provenance: str | None = None
    ) -> Table:
        """Sources (id, field, mean position, reference-frame position, epochs, mean magnitudes)
        of the current association (``provenance``: of that associate provenance; ``all_provenances``:
        of every association)."""
        from darkroom.pipeline.queries import LightCurveContext
        from darkroom.pipeline.rows import source_table

        prov = provenance
        if not all_provenances and prov is None:
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
        :func:`darkroom.pipeline.rows.field_measurements`)."""
        from darkroom.pipeline.queries import LightCurveContext
        from darkroom.pipeline.rows import field_measurements

        if provenance_id is None:
            ctx = LightCurveContext.from_config(self.root, self.registry, self.config)
            provenance_id = ctx.photometry_provenance
        sources = [source_id] if isinstance(source_id, int) else source_id
        images = [image_id] if isinstance(image_id, int) else image_id
        with self.registry.session() as s:
            return field_measurements(s, provenance_id=provenance_id, source_ids=sources, image_ids=images)

    def stage_provenances(self) -> dict[str, str]:
        """The provenance id of each stage under the current configuration (stage -> id)."""
        from darkroom.pipeline.stages import build_stages

        return {st.name: st.provenance_id for st in build_stages(self.root, self.config)}

    @staticmethod
    def _transparency_provenances(session, current: dict[str, str]) -> list[str]:
        """Light-curve provenances whose transparency was measured on the current photometry.

        The transparency of a frame does not depend on the target list, which enters the
        light-curve provenance too (automatic targets may appear after a run): every
        light-curve provenance made from the current photometry counts.
        """
        from darkroom.repo.models import Provenance

        phot = current.get("photometry")
        rows = session.execute(
            select(Provenance.id, Provenance.upstream).where(Provenance.stage == "lightcurves")
        )
        found = [pid for pid, up in rows if phot in (up or [])]
        return found or [current.get("lightcurves", "")]

    def provenances(self) -> Table:
        """Every provenance in the registry: stage, id, when, how many product rows it holds,
        and whether the current configuration makes it (``current``)."""
        from astropy.table import Table

        rows = self._provenance_rows()
        return Table(
            rows=[tuple(row.values()) for row in rows] or None,
            names=("stage", "provenance_id", "created_utc", "n_products", "current"),
            dtype=(str, str, str, int, bool),
        )

    def _provenance_rows(self, current: set[str] | None = None) -> list[dict]:
        """:meth:`provenances` as dicts (``status`` needs no astropy table); ``current``: the
        current configuration's provenance ids, when the caller has them."""
        from darkroom.repo.models import (
            Association,
            AstromSolution,
            Calib,
            ImageQuality,
            Lightcurve,
            PhotCal,
            Provenance,
            Source,
            SourceCatalog,
            Transparency,
        )

        tables = (
            Calib,
            Image,
            SourceCatalog,
            ImageQuality,
            AstromSolution,
            Association,
            Source,
            PhotCal,
            Transparency,
            Lightcurve,
        )
        if current is None:
            current = set(self.stage_provenances().values())
        rows: dict[str, int] = {}
        with self.registry.session() as s:
            for table in tables:
                for pid, n in s.execute(
                    select(table.provenance_id, func.count()).group_by(table.provenance_id)
                ).all():
                    rows[pid] = rows.get(pid, 0) + n
            provs = s.execute(
                select(Provenance.stage, Provenance.id, Provenance.created_utc).order_by(
                    Provenance.created_utc, Provenance.id
                )
            ).all()
        return [
            {
                "stage": st,
                "provenance_id": pid,
                "created_utc": str(created)[:19],
                "n_products": rows.get(pid, 0),
                "current": pid in current,
            }
            for st, pid, created in provs
        ]

    def images(self, *, provenance: str | list[str] | None = None) -> Table:
        """Calibrated images with their products of the current configuration (or of ``provenance``,
        one id or several): FWHM, quality flag and reason, astrometric flag and rms, zero point,
        transparency, and ``poor`` (by the quality limits or the transparency)."""
        from astropy.table import Table

        from darkroom.pipeline.products import image_products

        provs = [provenance] if isinstance(provenance, str) else provenance
        if provs is None:
            current = self.stage_provenances()
            with self.registry.session() as s:
                provs = [*current.values(), *self._transparency_provenances(s, current)]
        cols = (
            "image_id",
            "exposure_id",
            "night",
            "field",
            "filter",
            "mjd_mid",
            "fwhm_pix",
            "quality_flag",
            "astrom_flag",
            "astrom_rms_arcsec",
            "zp",
            "transparency",
            "poor",
            "poor_reason",
        )
        out = []
        with self.registry.session() as s:
            for ip in image_products(s, provs, only_ok=False):
                out.append(
                    (
                        ip.id,
                        ip.exposure_id,
                        ip.night or "",
                        ip.field or "",
                        ip.filter or "",
                        ip.mjd_mid if ip.mjd_mid is not None else float("nan"),
                        ip.quality.get("fwhm_pix") or float("nan"),
                        ip.quality_flag or "",
                        ip.astrom_flag or "",
                        ip.astrom_row.rms_arcsec
                        if ip.astrom_row and ip.astrom_row.rms_arcsec
                        else float("nan"),
                        ip.photcal_row.zp
                        if ip.photcal_row and ip.photcal_row.zp is not None
                        else float("nan"),
                        ip.transparency.value
                        if ip.transparency and ip.transparency.value is not None
                        else float("nan"),
                        ip.poor,
                        ip.poor_reason or "",
                    )
                )
        dtype = (int, int, str, str, str, float, float, str, str, float, float, float, bool, str)
        return Table(rows=out or None, names=cols, dtype=dtype)

    def status(self) -> dict:
        """Counts of exposures per state and type, images per quality and astrometry flag (with the
        poor frames and why), tasks per stage and state, and the failures."""
        from darkroom.pipeline.products import poor_image_ids
        from darkroom.repo.models import AstromSolution, ImageQuality

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
            current = self.stage_provenances()
            quality = dict(
                s.execute(
                    select(ImageQuality.flag, func.count())
                    .where(ImageQuality.provenance_id == current.get("quality"))
                    .group_by(ImageQuality.flag)
                ).all()
            )
            astrometry = dict(
                s.execute(
                    select(AstromSolution.flag, func.count())
                    .where(AstromSolution.provenance_id == current.get("astrometry"))
                    .group_by(AstromSolution.flag)
                ).all()
            )
            n_images = s.scalar(
                select(func.count()).select_from(Image).where(Image.provenance_id == current.get("calibrate"))
            )
            if n_images:
                quality["unmeasured"] = n_images - sum(quality.values())
                astrometry["unsolved"] = n_images - sum(astrometry.values())
            reasons = poor_image_ids(
                s,
                quality=[current.get("quality", "")],
                transparency=self._transparency_provenances(s, current),
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
                (path, reasons[image_id])
                for image_id, path in s.execute(
                    select(Image.id, Exposure.path)
                    .join(Exposure, Image.exposure_id == Exposure.id)
                    .where(Image.id.in_(list(reasons)))
                    .order_by(Image.mjd_mid)
                ).all()
            ]
        return {
            "images_quality": {k: v for k, v in quality.items() if v},
            "images_astrometry": {k: v for k, v in astrometry.items() if v},
            "provenances": self._provenance_rows(set(current.values())),
            "poor": poor,
            "exposures": by_state,
            "types": by_type,
            "quarantined": quarantined,
            "tasks": [tuple(t) for t in tasks],
            "failed": [tuple(f) for f in failed],
            "targets": n_targets,
            "downloads": downloads,
        }
