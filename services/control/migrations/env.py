"""Alembic environment of the control-plane database (its own version table, so it can share a
PostgreSQL database with the episode catalog; shared body in data/sqldb.py)."""

from data.sqldb import run_alembic_env
from services.control.models import Base

run_alembic_env(Base.metadata, "alembic_version_control")
