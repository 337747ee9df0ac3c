"""create_app(): settings, database, service, API, CLI — a few register_* calls."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from flask import Flask
from flask.json.provider import DefaultJSONProvider

from .settings import Settings, default_instance_path


class FastJSONProvider(DefaultJSONProvider):
    """Flask's JSON, encoded by orjson: the same values (types orjson does not know, and datetimes,
    go through Flask's own conversion), keys in insertion order, several times faster."""

    sort_keys = False
    _options = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_NON_STR_KEYS

    def dumps(self, obj, **kwargs) -> str:  # type: ignore[override]
        if kwargs:  # options orjson has no equivalent for (indent, ...): Flask's own encoder
            return super().dumps(obj, **kwargs)
        return orjson.dumps(obj, default=self.default, option=self._options).decode()

    def encode(self, obj) -> bytes:
        """The bytes of a JSON answer (the fast path writes them without a response object)."""
        return orjson.dumps(obj, default=self.default, option=self._options)

    def response(self, *args, **kwargs):  # type: ignore[override]
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(self.encode(obj), mimetype=self.mimetype)


def create_app(settings: Settings | None = None, *, clock: Callable[[], datetime] | None = None) -> Flask:
    settings = settings or Settings.from_env()
    instance_path = settings.instance_path or default_instance_path()
    app = Flask("app", instance_path=instance_path, instance_relative_config=True, static_folder=None)
    app.config["RPM_SETTINGS"] = settings
    # a path is matched as sent: werkzeug would merge "//" with a 308 redirect (an HTML page) to another path,
    # which a client following redirects would post to ("EURUSD%2F" closing EURUSD)
    app.url_map.merge_slashes = False
    app.json = FastJSONProvider(app)
    register_service(app, settings, clock)
    register_observability(app, settings)
    register_api(app)
    return app


def register_observability(app: Flask, settings: Settings) -> None:
    from .observability import configure_logging, register_request_ids

    configure_logging(settings.log_level)
    register_request_ids(app)


def register_service(app: Flask, settings: Settings, clock: Callable[[], datetime] | None) -> None:
    from .presets import load_preset
    from .services import Services, UnitOfWork, system_clock
    from .store.database import Database

    def database(url: str, **more: Any) -> Database:
        return Database(url, lock_timeout_ms=settings.lock_timeout_ms, statement_timeout_ms=settings.statement_timeout_ms,
                        connect_timeout_s=settings.connect_timeout_s, pool_size=settings.pool_size,
                        silence_timeout_ms=settings.db_silence_timeout_ms, **more)

    db = database(settings.resolved_database_url(app.instance_path))
    read_url = settings.resolved_read_url()
    # (connections renewed every minute: listed with a fallback, `target_session_attrs=prefer-standby`, reads go
    # back to the replica once it is back)
    history_db = None if read_url is None else database(read_url, pool_recycle=60,
                                                              application_name="rpm-history")
    config = load_preset(settings.default_preset, total_capital=settings.default_capital)
    from .keys import KeyStore

    uow = UnitOfWork(db, clock or system_clock, default_config=config, history_db=history_db,
                     history_reads=settings.history_reads or max(1, settings.threads // 2))
    services = Services(uow, group_commit=settings.group_commit)
    if settings.unsafe_disable_portfolio_lock:
        app.logger.warning("RPM_TEST_UNSAFE_DISABLE_PORTFOLIO_LOCK: decisions are NOT serialized (tests only)")
        services.trading.unsafe_disable_portfolio_lock = True
    if settings.unsafe_disable_group_lock:
        app.logger.warning("RPM_TEST_UNSAFE_DISABLE_GROUP_LOCK: groups' limits are NOT serialized (tests only)")
        uow.unsafe_groups = True
    app.extensions["rpm"] = services
    app.extensions["rpm_keys"] = KeyStore(uow, settings.auth_cache_seconds,
                                          failures_per_minute=settings.auth_failures_per_minute)
    from .anchor import Anchor, Signer, Sink, load_public_key
    from .compliance import Compliance

    instance = Path(app.instance_path)
    signer = Signer.from_file(settings.audit_signing_key or instance / "audit-signing-key.pem",
                              create=settings.audit_signing_key is None)
    anchor = Anchor(uow, signer, Sink(settings.audit_sink or instance / "checkpoints"),
                    settings.checkpoint_every_records, settings.checkpoint_every_seconds,
                    [load_public_key(path) for path in settings.audit_trusted_keys])
    app.extensions["rpm_anchor"] = anchor
    from .webhooks import Deliverer

    app.extensions["rpm_deliverer"] = Deliverer(
        db.url, poll_s=settings.webhook_poll_s, timeout_s=settings.webhook_timeout_s,
        max_attempts=settings.webhook_max_attempts, connect_timeout_s=settings.connect_timeout_s)
    app.extensions["rpm_compliance"] = Compliance(uow, anchor)


def register_api(app: Flask) -> None:
    from .api import register_api as _register

    app.extensions["rpm_api"] = _register(app)
