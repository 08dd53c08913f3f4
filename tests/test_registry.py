"""Registry on SQLite and PostgreSQL: migrations, constraints, sessions, bulk rows."""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.exc import IntegrityError

from darkroom.repo.models import Base, Exposure, Image, Measurement, Provenance, Source, Task
from darkroom.repo.registry import Registry


@pytest.fixture
def registry(db_url):
    reg = Registry(db_url)
    reg.upgrade()
    yield reg
    reg.dispose()


def _exposure(sha: str, **kw) -> Exposure:
    kw.setdefault("meta", {})
    return Exposure(sha256=sha, path=f"/raw/{sha}.fits", size_bytes=10, state="ok", **kw)


def test_migrations_reach_head_and_match_models(registry):
    assert registry.is_current()
    with registry.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"
    # upgrading twice is harmless
    registry.upgrade()
    assert registry.revision() == Registry.head_revision()
    # the revisions darkroom reads without alembic's runtime are alembic's own
    from alembic.script import ScriptDirectory

    from darkroom.repo.registry import alembic_config

    with registry.engine.connect() as conn:
        assert registry.revision() == MigrationContext.configure(conn).get_current_revision()
    assert (
        Registry.head_revision()
        == ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    )


def test_empty_database_has_no_revision(db_url):
    reg = Registry(db_url)
    try:
        assert reg.revision() is None and not reg.is_current()
    finally:
        reg.dispose()


def test_checksum_is_unique(registry):
    with registry.session() as s:
        s.add(_exposure("a" * 64))
    with pytest.raises(IntegrityError), registry.session() as s:
        s.add(_exposure("a" * 64))
    with registry.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Exposure)) == 1


def test_session_rolls_back_on_error(registry):
    with pytest.raises(RuntimeError), registry.session() as s:
        s.add(_exposure("b" * 64))
        s.flush()
        raise RuntimeError("boom")
    with registry.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Exposure)) == 0


def test_json_and_datetime_round_trip(registry):
    t = datetime(2025, 6, 2, 4, 10, 44, 288000)
    with registry.session() as s:
        s.add(
            _exposure("c" * 64, time_mid_utc=t, frame_type="light", meta={"filter": "z", "warnings": ["x"]})
        )
    with registry.session() as s:
        e = s.scalars(sa.select(Exposure)).one()
        assert e.time_mid_utc == t
        assert e.meta == {"filter": "z", "warnings": ["x"]}


def test_measurements_bulk_and_indexed_query(registry):
    with registry.session() as s:
        s.add(Provenance(id="p1", stage="phot", params={}, code_version="0.1", upstream=[]))
        exps = [_exposure(f"{i:064d}") for i in range(3)]
        s.add_all(exps)
        s.flush()
        imgs = [
            Image(exposure_id=e.id, provenance_id="p1", path=f"img{i}", sha256="0")
            for i, e in enumerate(exps)
        ]
        srcs = [Source(provenance_id="p1", ra_deg=10 + i, dec_deg=20) for i in range(50)]
        s.add_all(imgs + srcs)
        s.flush()
        rows = [
            {
                "source_id": src.id,
                "image_id": img.id,
                "provenance_id": "p1",
                "x": 1.0,
                "y": 2.0,
                "flux": float(src.id * 10 + img.id),
                "flags": 0,
                "forced": False,
            }
            for img in imgs
            for src in srcs
        ]
        s.execute(sa.insert(Measurement), rows)
        target = srcs[7].id
    with registry.session() as s:
        fluxes = s.scalars(
            sa.select(Measurement.flux).where(Measurement.source_id == target).order_by(Measurement.image_id)
        ).all()
    assert fluxes == [float(target * 10 + img.id) for img in imgs]
    with registry.engine.connect() as conn:
        insp = sa.inspect(conn)
        indexes = {ix["name"] for ix in insp.get_indexes("measurement")}
        uniques = [tuple(u["column_names"]) for u in insp.get_unique_constraints("measurement")]
    assert "ix_measurement_image_id" in indexes
    # source_id leads the unique constraint, whose index answers light-curve queries.
    assert ("source_id", "image_id", "provenance_id") in uniques


def test_task_natural_key_is_unique(registry):
    with registry.session() as s:
        s.add(Task(stage="calibrate", key="exp:1", provenance_id="p", state="done"))
    with pytest.raises(IntegrityError), registry.session() as s:
        s.add(Task(stage="calibrate", key="exp:1", provenance_id="p", state="pending"))
    with registry.session() as s:
        s.add(
            Task(stage="calibrate", key="exp:1", provenance_id="q", state="pending")
        )  # new provenance: allowed
