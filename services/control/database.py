"""Opening the control-plane database: SQLite next to the store by default, any SQLAlchemy URL for
a fleet (PostgreSQL); migrated to the newest revision on open."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy.orm import Session, sessionmaker

from data.sqldb import open_engine, upgrade_schema
from services.control import serving_sequence

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_control"


class ControlDB:
    def __init__(self, url: str):
        self.url = url
        self.engine = open_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        serving_sequence.track(self._session)  # every serving change numbers itself
        upgrade_schema(self.engine, url, MIGRATIONS, VERSION_TABLE)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any error."""
        with self._session.begin() as s:
            yield s

    def close(self) -> None:
        self.engine.dispose()
