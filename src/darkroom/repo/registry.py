"""The registry: a SQLAlchemy engine on SQLite (default) or PostgreSQL, kept at the
Alembic head revision.

Only the pipeline driver writes the registry (workers compute and write files), so
SQLite stays safe; ``session()`` commits on success and rolls back on error, the
pattern BANZAI's ``get_session`` uses.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from darkroom.errors import RegistryError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

_REVISION = re.compile(r"^revision(?:\s*:\s*str)?\s*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision(?:\s*:[^=]+)?\s*=\s*(None|[\"'][^\"']+[\"'])", re.MULTILINE)

__all__ = ["Registry", "alembic_config", "registry_error", "resolve_url", "safe_url"]

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


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable URL>"


def registry_error(exc: BaseException, url: str) -> RegistryError:
    """One line in plain words for a database error (unreachable server, missing database, bad URL)."""
    where = safe_url(url)
    if isinstance(exc, NoSuchModuleError):
        return RegistryError(f"registry.url {where}: unknown database or driver ({exc})")
    if isinstance(exc, ArgumentError):
        return RegistryError(
            f"registry.url {url.split('@')[-1]!r} is not a database URL "
            "(expected e.g. sqlite:///registry.db or postgresql+psycopg://user@host/dbname)"
        )
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split()) or orig.__class__.__name__
    low = text.lower()
    if "does not exist" in low and "database" in low:
        name = make_url(url).database
        return RegistryError(
            f"the registry database {name!r} does not exist at {where}; create it "
            f"(createdb {name}) or fix registry.url in darkroom.yaml"
        )
    if any(
        w in low
        for w in ("connection refused", "could not connect", "timeout", "no route", "name or service")
    ):
        return RegistryError(
            f"cannot reach the registry database at {where}: is the server running? ({text[:200]})"
        )
    if "password authentication failed" in low or "no password supplied" in low:
        return RegistryError(
            f"the registry database at {where} refused the login: check the user and password "
            "(PGPASSWORD or ~/.pgpass)"
        )
    if "unable to open database file" in low:
        return RegistryError(
            f"cannot open the SQLite registry at {make_url(url).database}: its folder is missing or read-only"
        )
    return RegistryError(f"registry database error at {where}: {text[:200]}")


def alembic_config(url: str) -> AlembicConfig:
    # alembic (with mako and pygments) loads when a schema is checked or migrated, not with
    # every command that only reads the registry
    from alembic.config import Config as AlembicConfig

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
        """Bring the schema to the newest migration (creates it on an empty database).

        On SQLite, foreign keys are off while the migrations run: a batch ALTER copies a
        table and drops the old one, which would otherwise cascade to (or be refused by)
        the rows that refer to it. They are checked after the upgrade.
        """
        from alembic import command

        cfg = alembic_config(self.url)
        sqlite = self.backend == "sqlite"
        with self.engine.connect() as conn:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # before any BEGIN, or it is ignored
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
            if sqlite:
                bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                if bad:
                    raise RuntimeError(f"registry upgrade left {len(bad)} dangling references, e.g. {bad[0]}")

    def backup(self, folder: Path) -> Path:
        """Copy the whole registry into ``folder`` before an upgrade; returns the copy's path.

        SQLite: an online copy of the database file (the SQLite backup API, safe with WAL).
        PostgreSQL: ``pg_dump`` in its custom format (restore with ``pg_restore``); a
        :class:`~darkroom.errors.ConfigError` says so when ``pg_dump`` is not installed.
        """
        import shutil
        import sqlite3
        import subprocess
        from datetime import UTC, datetime

        from darkroom.errors import ConfigError

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        revision = self.revision() or "empty"
        url = make_url(self.url)
        if self.backend == "sqlite":
            dest = folder / f"registry-{revision}-{stamp}.db"
            src = sqlite3.connect(url.database)
            try:
                dst = sqlite3.connect(dest)
                with dst:
                    src.backup(dst)
                dst.close()
            finally:
                src.close()
            return dest
        pg_dump = shutil.which("pg_dump")
        if pg_dump is None:
            raise ConfigError(
                "the registry needs an upgrade and pg_dump is not installed to back it up first: back up "
                "the database yourself, then run 'darkroom upgrade REPO --no-backup'"
            )
        dest = folder / f"registry-{revision}-{stamp}.pgdump"
        libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
        proc = subprocess.run(
            [pg_dump, "--format=custom", "--file", str(dest), "--dbname", libpq],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise ConfigError(f"pg_dump failed, registry not upgraded: {' '.join(proc.stderr.split())[:300]}")
        return dest

    def revision(self) -> str | None:
        """The schema revision recorded in the database (alembic's version table); None when
        the database is empty. Read with plain SQL: alembic's runtime (with mako and pygments)
        costs a quarter of a second to import, on every command."""
        from sqlalchemy import inspect, text

        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        if len(rows) > 1:
            raise RegistryError(f"registry has several schema heads {sorted(rows)}: not a darkroom registry")
        return rows[0] if rows else None

    @staticmethod
    def head_revision() -> str | None:
        """The newest migration: the one no other migration names as its ``down_revision``
        (darkroom's history is linear; alembic decides if the files say anything else)."""
        revisions: dict[str, str | None] = {}
        for path in sorted((MIGRATIONS / "versions").glob("*.py")):
            text_ = path.read_text()
            rev = _REVISION.search(text_)
            down = _DOWN_REVISION.search(text_)
            if rev is None or down is None:
                continue
            revisions[rev.group(1)] = None if down.group(1) == "None" else down.group(1).strip("\"'")
        heads = set(revisions) - {d for d in revisions.values() if d is not None}
        if len(heads) == 1:
            return heads.pop()
        from alembic.script import ScriptDirectory

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
