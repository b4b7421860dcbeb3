"""SQL plumbing shared by every database of the product (the episode catalog, the control plane):
an engine with SQLite set up for several processes at once, and Alembic upgrades on open."""

from __future__ import annotations

import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

from data.files import FileLock


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def open_engine(url: str) -> Engine:
    """SQLite in WAL mode with a long busy timeout (recorders, API and workers share it); any other
    URL as SQLAlchemy opens it."""
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def alembic_config(url: str, script_location: Path, version_table: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.set_main_option("version_table", version_table)
    return cfg


def current_revision(engine: Engine, version_table: str) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": version_table}).get_current_revision()


def upgrade_schema(engine: Engine, url: str, script_location: Path, version_table: str = "alembic_version") -> None:
    """Bring the schema to the newest revision (a no-op when it is there already). Two processes
    opening a new SQLite database at once must not both create tables: a file lock serialises them."""
    cfg = alembic_config(url, script_location, version_table)
    db_path = engine.url.database if url.startswith("sqlite") else None
    if db_path and db_path != ":memory:":
        Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    if current_revision(engine, version_table) == head:
        return
    lock = None
    if db_path and db_path != ":memory:":
        lock = FileLock(Path(db_path + ".migrate.lock"))
        while not lock.try_acquire():
            time.sleep(0.05)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        if lock:
            lock.release()


def run_alembic_env(target_metadata, default_version_table: str = "alembic_version") -> None:
    """The body of a migrations/env.py: online on the connection the opener hands over (or on
    sqlalchemy.url), offline as SQL; the version table comes from the config."""
    from alembic import context

    config = context.config
    version_table = config.get_main_option("version_table", default_version_table)
    opts = {"target_metadata": target_metadata, "version_table": version_table}
    if context.is_offline_mode():
        context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, **opts)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is None:
        with create_engine(config.get_main_option("sqlalchemy.url")).connect() as conn:
            context.configure(connection=conn, render_as_batch=True, **opts)
            with context.begin_transaction():
                context.run_migrations()
        return
    context.configure(connection=connection, render_as_batch=True, **opts)
    with context.begin_transaction():
        context.run_migrations()
