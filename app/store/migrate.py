"""Alembic, driven from Python: upgrade to head, and whether the database is at head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .database import DB_ERRORS, Database

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


_HEADS: dict[str, tuple[str, ...]] = {}


def head_revisions(url: str) -> tuple[str, ...]:
    if "heads" not in _HEADS:
        _HEADS["heads"] = tuple(ScriptDirectory.from_config(alembic_config(url)).get_heads())
    return _HEADS["heads"]


def migration_status(db: Database) -> dict[str, Any]:
    heads = head_revisions(db.url)
    try:
        with db.engine.connect() as conn:
            current = tuple(MigrationContext.configure(conn).get_current_heads())
    except DB_ERRORS as exc:
        return {"ready": False, "database": "unavailable", "message": f"database unavailable ({type(exc).__name__})",
                "current": None, "head": list(heads)}
    at_head = set(current) == set(heads)
    return {
        "ready": at_head,
        "database": "ok",
        "message": "ready" if at_head else "migrations are not at head: run `rpm db upgrade`",
        "current": list(current),
        "head": list(heads),
    }
