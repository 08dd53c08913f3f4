"""The registry: a SQLAlchemy engine on SQLite (default) or PostgreSQL, kept at the
Alembic head revision.

Only the pipeline driver writes the registry (workers compute and write files), so
SQLite stays safe; ``session()`` commits on success and rolls back on error, the
pattern BANZAI's ``get_session`` uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Registry", "alembic_config", "resolve_url"]

MIGRATIONS = Path(__file__).with_name("migrations")


def resolve_url(url: str, root: Path | None = None) -> str:
    """Make a relative SQLite path relative to the repository root."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        db = Path(parsed.database).expanduser()
        if not db.is_absolute() and root is not None:
            db = Path(root) / db
        return str(parsed.set(database=str(db)))
    return url


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers (status, light-curve queries) run while the driver writes;
    # synchronous=NORMAL is durable across application crashes in WAL mode.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Registry:
    """A connection to one registry database."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        kwargs: dict = {"echo": echo, "future": True}
        backend = make_url(url).get_backend_name()
        if backend == "sqlite":
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if backend == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    # -- schema -----------------------------------------------------------------
    def upgrade(self) -> None:
        """Bring the schema to the newest migration (creates it on an empty database)."""
        cfg = alembic_config(self.url)
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @staticmethod
    def head_revision() -> str | None:
        return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()

    def is_current(self) -> bool:
        return self.revision() == self.head_revision()

    # -- sessions ---------------------------------------------------------------
    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back on an exception."""
        sess = self._sessions()
        try:
            yield sess
            sess.commit()
        except BaseException:
            sess.rollback()
            raise
        finally:
            sess.close()

    def dispose(self) -> None:
        self.engine.dispose()
