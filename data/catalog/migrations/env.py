"""Alembic environment: runs on the connection the Catalog hands over (or on sqlalchemy.url)."""

from alembic import context
from sqlalchemy import create_engine

from data.catalog.models import Base

config = context.config
target_metadata = Base.metadata
version_table = config.get_main_option("version_table", "alembic_version")


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                          version_table=version_table)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True,
                          version_table=version_table)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True,
                      version_table=version_table)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
