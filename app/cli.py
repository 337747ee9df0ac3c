"""The `rpm` command: serve, db, halt, resume, status (and more as the service grows)."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import sys

import click

from .settings import Settings, default_instance_path


def _settings() -> Settings:
    return Settings.from_env()


def _url(settings: Settings) -> str:
    return settings.resolved_database_url(settings.instance_path or default_instance_path())


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _service():
    from .factory import create_app

    return create_app(_settings()).extensions["rpm"]


def _operator():
    from .services import Actor

    return Actor(f"cli:{getpass.getuser()}", "admin")


def _print(payload) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


@click.group()
def main() -> None:
    """RPM, the Risk & Portfolio Manager."""


@main.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the migrations up to REVISION."""
    from .store.migrate import upgrade

    settings = _settings()
    upgrade(_url(settings), revision)
    _service().ensure_default_portfolio()
    click.echo(f"database at {revision}: {_safe_url(_url(settings))}")


@db.command("downgrade")
@click.option("--revision", default="base", show_default=True)
def db_downgrade(revision: str) -> None:
    """Revert the migrations down to REVISION."""
    from .store.migrate import downgrade

    downgrade(_url(_settings()), revision)
    click.echo(f"database at {revision}")


ENDPOINTS = [
    ("POST", "/process_trade", "decide one trade intent (main endpoint)"),
    ("POST", "/what_if", "the decision an intent would get now, nothing stored"),
    ("POST", "/marks", "latest prices: revalue, evaluate kill switches"),
    ("POST", "/fills", "execution report for an approved decision"),
    ("POST", "/positions/{symbol}/close", "close a position at a price"),
    ("GET", "/portfolio", "positions, exposures, equity, PnL, drawdown"),
    ("GET", "/health", "kill switches, trading state, metrics, database"),
    ("GET", "/health/live, /health/ready", "liveness, readiness"),
    ("GET", "/metrics", "decision counts, approval rate, rejections, latency"),
    ("POST", "/halt, /resume", "manual halt and resume (admin)"),
    ("GET/PUT", "/config", "configuration, versioned"),
    ("GET", "/docs, /openapi.json", "API documentation"),
]


@main.command()
@click.option("--port", type=int, default=None, help="default: RPM_PORT or 8005")
@click.option("--host", default=None, help="default: RPM_HOST or 0.0.0.0")
@click.option("--workers", type=int, default=None)
@click.option("--threads", type=int, default=None)
def serve(port: int | None, host: str | None, workers: int | None, threads: int | None) -> None:
    """Apply migrations, then serve the API with gunicorn."""
    from .store.migrate import upgrade

    settings = _settings()
    url = _url(settings)
    upgrade(url)
    _service().ensure_default_portfolio()
    port = port or settings.port
    host = host or settings.host
    workers = workers or settings.workers
    threads = threads or settings.threads
    if url.startswith("sqlite"):
        workers = 1  # one process per SQLite file: it serializes writers anyway
    click.echo("=" * 78)
    click.echo(" RPM - RISK & PORTFOLIO MANAGER")
    click.echo(" Signals propose trades. RPM decides survival.")
    click.echo("=" * 78)
    click.echo(f" listening on http://{host}:{port}  ({workers} workers x {threads} threads)")
    click.echo(f" database: {_safe_url(url)}")
    click.echo(" endpoints:")
    for method, path, what in ENDPOINTS:
        click.echo(f"   {method:8} {path:32} {what}")
    click.echo("=" * 78, nl=True)
    sys.stdout.flush()
    gunicorn = shutil.which("gunicorn", path=os.path.dirname(sys.executable)) or shutil.which("gunicorn")
    args = [gunicorn, "--bind", f"{host}:{port}", "--workers", str(workers), "--threads", str(threads),
            "--worker-class", "gthread", "--timeout", "30", "--graceful-timeout", "10",
            "--log-level", settings.log_level.lower(), "app:create_app()"]
    os.execv(gunicorn, args)


@main.command()
@click.option("--reason", required=True, help="why trading is halted (audited)")
@click.option("--portfolio", "portfolio_id", default="default", show_default=True)
def halt(reason: str, portfolio_id: str) -> None:
    """Halt trading: only reducing trades pass until a manual resume."""
    _print(_service().halt(portfolio_id, reason, _operator()))


@main.command()
@click.option("--force", is_flag=True, help="resume during an automatic switch's cooldown")
@click.option("--reason", default=None, help="required with --force (audited)")
@click.option("--portfolio", "portfolio_id", default="default", show_default=True)
def resume(force: bool, reason: str | None, portfolio_id: str) -> None:
    """Resume trading (refused during a cooldown unless --force with --reason)."""
    from .errors import ServiceError

    try:
        _print(_service().resume(portfolio_id, _operator(), force=force, reason=reason))
    except ServiceError as exc:
        click.echo(f"refused: {exc.message} {json.dumps(exc.errors)}", err=True)
        sys.exit(1)


@main.command()
@click.option("--portfolio", "portfolio_id", default="default", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="the full health document")
def status(portfolio_id: str, as_json: bool) -> None:
    """Trading state, kill switches, equity and drawdown."""
    health = _service().health(portfolio_id)
    if as_json:
        _print(health)
        return
    p = health["portfolio_state"]
    click.echo(f"portfolio {portfolio_id}: {health['trading_state']} ({health['health']})")
    click.echo(f"  equity {p['equity']:,.2f}  peak {p['peak_equity']:,.2f}  drawdown {p['drawdown_pct']:.2f}%  "
               f"daily PnL {p['daily_pnl']:,.2f}  weekly PnL {p['weekly_pnl']:,.2f}")
    click.echo(f"  open positions {p['open_positions']}  gross {p['exposures']['gross']:,.2f}  "
               f"net {p['exposures']['net']:,.2f}")
    for name, sw in health["kill_switches"].items():
        if name in ("volatility_shock", "manual_halt"):
            extra = sw.get("reason") or ", ".join(sw.get("halted_symbols", {})) or ""
            click.echo(f"  {name:20} {sw['state']:8} {extra}")
        else:
            current = "-" if sw["current"] is None else f"{sw['current']:.6g}"
            click.echo(f"  {name:20} {sw['state']:8} current {current}  threshold {sw['threshold']:.6g}")


if __name__ == "__main__":
    main()
