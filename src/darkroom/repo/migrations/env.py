"""Alembic environment: migrations of the darkroom registry.

Run through :func:`darkroom.repo.registry.upgrade` (which passes an open
connection) or by hand: ``alembic -c <this folder>/alembic.ini -x url=... upgrade head``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from darkroom.repo.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
    engine.dispose()


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs batch mode for ALTER
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
