"""Alembic environment of the episode catalog (shared body in data/sqldb.py)."""

from data.catalog.models import Base
from data.sqldb import run_alembic_env

run_alembic_env(Base.metadata, "alembic_version")
