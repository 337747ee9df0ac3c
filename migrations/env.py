"""Alembic environment: the schema of app.store.models, the URL from DATABASE_URL."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from app.settings import Settings, default_instance_path
from app.store.models import Base
from app.store.partitions import PARTITION

config = context.config
if config.config_file_name is not None and not config.attributes.get("skip_logging"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    """The months' partitions of decisions are the database's (app/store/partitions.py), not the models'."""
    return not (type_ == "table" and reflected and compare_to is None and PARTITION.match(name or ""))


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    return url or Settings.from_env().resolved_database_url(default_instance_path())


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True, compare_type=True,
                      include_object=include_object)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = create_engine(database_url(), poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                          compare_type=True, include_object=include_object)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
