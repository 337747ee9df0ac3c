"""Migrations: empty database -> head -> base -> head, with no drift from the models."""

import json

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

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


def test_atr_histories_move_out_of_the_portfolio_row_and_back(empty_database_url):
    """0008 moves each portfolio's ATR histories from `memory` to one row per symbol; its downgrade undoes it."""
    upgrade(empty_database_url, "0007")
    engine = create_engine(empty_database_url)
    memory = {"atr_history": {"EURUSD": [0.001, 0.002], "USDJPY": [0.5]}, "recent_confidences": [0.7],
              "recent_intent_times": [1.5]}
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO portfolios (id, account_currency, starting_capital, realised_pnl, trading_state, "
                "switches, memory, counters, config_version, last_seq, created_at, updated_at) VALUES "
                "('p', 'USD', 1000, 0, 'ACTIVE', '{}', CAST(:m AS jsonb), '{}', 1, 0, now(), now())"),
                {"m": json.dumps(memory)})
        upgrade(empty_database_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT symbol, history FROM atr_histories ORDER BY symbol")).all() == [
                ("EURUSD", [0.001, 0.002]), ("USDJPY", [0.5])]
            assert conn.execute(text("SELECT memory FROM portfolios")).scalar_one() == {
                "recent_confidences": [0.7], "recent_intent_times": [1.5]}
        downgrade(empty_database_url, "0007")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT memory FROM portfolios")).scalar_one() == memory
    finally:
        engine.dispose()


def test_json_columns_are_compressed_with_lz4_and_back(empty_database_url):
    """0009: every JSONB column compresses with lz4 (cheaper than pglz for a decision's ~5 KB); its
    downgrade gives them back the server's default."""
    upgrade(empty_database_url)
    engine = create_engine(empty_database_url)
    compression = text("SELECT c.relname || '.' || a.attname, a.attcompression FROM pg_attribute a "
                       "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = current_schema() AND c.relkind = 'r' AND a.atttypid = 'jsonb'::regtype "
                       "AND NOT a.attisdropped")
    try:
        with engine.begin() as conn:
            if "lz4" not in conn.execute(text("SELECT enumvals FROM pg_settings "
                                              "WHERE name = 'default_toast_compression'")).scalar():
                pytest.skip("this PostgreSQL is built without lz4")
            columns = dict(conn.execute(compression).all())
            assert len(columns) >= 16 and set(columns.values()) == {"l"}, columns
            # a value large enough to be compressed is stored with lz4
            prices = [i / 7 for i in range(2000)]
            conn.execute(text("INSERT INTO mark_snapshots (hash, symbol, prices, created_at) "
                              "VALUES ('h', 'EURUSD', CAST(:p AS jsonb), now())"), {"p": json.dumps(prices)})
            assert conn.execute(text("SELECT pg_column_compression(prices) FROM mark_snapshots")).scalar() == "lz4"
        downgrade(empty_database_url, "0008")
        with engine.connect() as conn:
            assert set(dict(conn.execute(compression).all()).values()) == {""}
    finally:
        engine.dispose()
