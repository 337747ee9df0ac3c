"""Migrations: empty database -> head -> base -> head, with no drift from the models."""

from alembic import command
from sqlalchemy import create_engine, inspect

from app.store.migrate import alembic_config, downgrade, upgrade

TABLES = {"portfolios", "positions", "marks", "config_versions", "decisions", "fills", "switch_events",
          "admin_actions"}


def tables(url):
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_empty_database_to_head_to_base_to_head_without_drift(empty_database_url):
    upgrade(empty_database_url)
    assert tables(empty_database_url) >= TABLES
    command.check(alembic_config(empty_database_url))  # raises if the models and migrations differ
    downgrade(empty_database_url, "base")
    assert tables(empty_database_url) == set()
    upgrade(empty_database_url)
    assert tables(empty_database_url) >= TABLES
    command.check(alembic_config(empty_database_url))
