"""The `rpm` command: serve, db, halt, resume, status (and more as the service grows)."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from .gunicorn_conf import EMBEDDED_DATA
from .risk.domain import ROLES
from .settings import Settings, SettingsError, default_instance_path, embedded_data, psycopg_url


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _url(settings: Settings, create: bool = False) -> str:
    """The database's URL, once it answers (within RPM_CONNECT_TIMEOUT_S). Without DATABASE_URL, the embedded
    server of the instance folder, started if need be; made there only if ``create`` (`rpm serve`, `rpm db
    upgrade`)."""
    from sqlalchemy import create_engine, pool

    if not create:
        _embedded_here(settings)
    url = settings.resolved_database_url(settings.instance_path or default_instance_path())
    engine = create_engine(url, poolclass=pool.NullPool, connect_args={"connect_timeout": settings.connect_timeout_s})
    try:
        with engine.connect():  # (a database away: one line, at once, not after the migrations' own wait)
            pass
    finally:
        engine.dispose()
    return url


def _embedded_data(settings: Settings) -> Path:
    return embedded_data(str(Path(settings.instance_path or default_instance_path()).absolute()))


def _embedded_here(settings: Settings) -> None:
    """Without DATABASE_URL, a command works on the embedded database of the instance folder only if there is one:
    it never makes an empty one (no RPM in it), only `rpm serve` and `rpm db upgrade` do."""
    if settings.database_url is None and not (_embedded_data(settings) / "PG_VERSION").exists():
        raise click.ClickException(f"no RPM database here (no embedded PostgreSQL in {_embedded_data(settings)}): run "
                                   "`rpm serve` first, or set DATABASE_URL (or RPM_INSTANCE_PATH: the instance folder "
                                   "of the RPM to work on)")


def _database_name(settings: Settings) -> str:
    """The database, as a message names it: its URL with the password hidden, or the embedded server's folder."""
    if settings.database_url:
        return _safe_url(psycopg_url(settings.database_url))
    return f"the embedded PostgreSQL in {_embedded_data(settings)}"


def _database_down(exc: BaseException) -> str | None:
    """One line for an error that is the database not answering, or answering without RPM's schema: which
    database and the driver's reason. None for any other error (a bug stays a traceback)."""
    import psycopg
    from sqlalchemy.exc import DBAPIError

    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    driver = next((e.orig if isinstance(e, DBAPIError) else e for e in chain
                   if isinstance(e, psycopg.Error) or isinstance(e, DBAPIError) and isinstance(e.orig, psycopg.Error)),
                  None)
    no_schema = isinstance(driver, psycopg.errors.UndefinedTable)
    # (no SQLSTATE: the server was never reached, or refused the connection)
    away = isinstance(driver, psycopg.OperationalError) and driver.sqlstate is None
    if not (no_schema or away):
        return None
    try:
        name = _database_name(Settings.from_env())
    except SettingsError:
        return None
    if no_schema:
        return f"no RPM schema in {name}: run `rpm db upgrade` (or `rpm serve`)"
    reason = (str(driver).strip().splitlines() or [type(driver).__name__])[0]
    return f"database unavailable: {name} ({reason})"


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    # (a password may also come as a query parameter, libpq's way)
    hidden = {k: "***" for k in parsed.query if k.lower() in ("password", "sslpassword")}
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def _app():
    """The app for one command; its database connections are closed when the command ends."""
    from .factory import create_app

    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    app = root.meta.get("rpm_app") if root else None
    if app is None:
        settings = _settings()
        _embedded_here(settings)
        app = create_app(settings)
        if root is not None:
            root.meta["rpm_app"] = app
            root.call_on_close(app.extensions["rpm"].db.dispose)
    return app


def _uow():
    """The unit of work the use cases run in."""
    return _app().extensions["rpm"].uow


def _keys():
    return _app().extensions["rpm_keys"]


def _bootstrap(settings: Settings) -> str | None:
    """The admin key of RPM_BOOTSTRAP_ADMIN_KEY, made unless it is already: what became of it (None: not set)."""
    if not settings.bootstrap_admin_key:
        return None
    result = _keys().ensure_bootstrap(settings.bootstrap_admin_key)
    return (f"the admin key of RPM_BOOTSTRAP_ADMIN_KEY ({settings.bootstrap_admin_key[:12]}...): "
            f"{'created' if result['created'] else 'kept'}{' (REVOKED: it will be refused)' if result['revoked'] else ''}")


def _ensure_partitions() -> None:
    """The decisions' months ahead (app/store/partitions.py); a role not allowed to make them is told, not stopped."""
    from .errors import ServiceError

    try:
        _uow().ensure_partitions()
    except ServiceError as exc:
        click.echo(f"WARNING: the months ahead of the decisions' partitions could not be made ({exc.message}): run "
                   "`rpm db partitions` as the schema's owner (decisions of a month without its partition go to "
                   "decisions_default, and that month cannot be archived)", err=True)


def _check_read_database(settings: Settings) -> None:
    """DATABASE_READ_URL must be this trail's database (a replica of it): the same trail id. Unreachable now is only
    a warning (its reads answer 503 until it answers)."""
    if not settings.database_read_url:
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(settings.resolved_read_url(), connect_args={"connect_timeout": settings.connect_timeout_s})
    try:
        with engine.connect() as conn:
            theirs = conn.execute(text("SELECT id FROM audit_trail")).scalar()
            standby, feedback = conn.execute(text("SELECT pg_is_in_recovery(), current_setting('hot_standby_feedback')")
                                             ).one()
    except Exception as exc:  # noqa: BLE001 (any failure to read it is reported the same way)
        click.echo(f"WARNING: DATABASE_READ_URL does not answer now ({type(exc).__name__}): the compliance reads "
                   "answer 503 until it does", err=True)
        return
    finally:
        engine.dispose()
    with _uow().reading() as session:
        ours = session.execute(text("SELECT id FROM audit_trail")).scalar()
    if theirs != ours:
        raise click.ClickException(f"DATABASE_READ_URL is not a replica of this database (its trail is {theirs!r}, "
                                   f"this one's {ours!r}): the compliance reads would show another trail")
    if standby and feedback != "on":
        # trading's updates on the primary are cleaned up there, and replaying that cleanup on the standby cancels
        # the queries whose snapshot still sees what it removes once max_standby_streaming_delay (30 s) has passed:
        # an export longer than that, during trading, would end short
        click.echo("WARNING: DATABASE_READ_URL is a standby with hot_standby_feedback off: a compliance read longer "
                   "than its max_standby_streaming_delay is cancelled while trading goes on (an export ends short); "
                   "set hot_standby_feedback = on there", err=True)


def _operator():
    from .services import Actor

    return Actor(f"cli:{getpass.getuser()}", "admin")


def _print(payload: Any, as_json: bool = True, *, lines: Iterable[str] = (), headers: Sequence[str] = (),
           rows: Iterable[Sequence[Any]] = (), after: Iterable[str] = ()) -> None:
    """What a command found or did, in one of two forms: the machine's (``as_json``, --json: ``payload`` as JSON), or
    a reader's: ``lines``, then ``rows`` as a table under ``headers`` (columns aligned, numbers to the right, nothing
    as "-"), then ``after``."""
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=str))
        return
    for line in lines:
        click.echo(line)
    if headers:
        cells = [[_cell(v) for v in row] for row in rows]
        widths = [max([len(h)] + [len(row[i][0]) for row in cells]) for i, h in enumerate(headers)]
        right = [bool(cells) and all(row[i][1] for row in cells) for i in range(len(headers))]
        for row in [[(h, False) for h in headers], *cells]:
            click.echo("  ".join(text.rjust(w) if r else text.ljust(w)
                                 for (text, _), w, r in zip(row, widths, right, strict=True)).rstrip())
    for line in after:
        click.echo(line)


def _cell(value: Any) -> tuple[str, bool]:
    """A table cell's text, and whether it is a number (aligned to the right)."""
    if value is None:
        return "-", False
    if isinstance(value, bool):
        return ("yes" if value else "no"), False
    if isinstance(value, int):
        return str(value), True
    if isinstance(value, float | Decimal):
        return f"{value:,.2f}", True
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "-", False
    return str(value), False


def _trading_text(done: str, out: dict[str, Any]) -> dict[str, Any]:
    """A halt's or a resume's answer for a reader: what was done, the state it left, the events it made."""
    left = [f"trading state {out['trading_state']}"]
    if out.get("tripped_switches"):
        left.append(f"switches tripped: {', '.join(out['tripped_switches'])}")
    if out.get("halted_symbols"):
        left.append(f"symbols halted: {', '.join(out['halted_symbols'])}")
    return {"lines": [f"{done}: {'; '.join(left)}"], "headers": ("SWITCH", "ACTION", "AT", "REASON"),
            "rows": [(e["switch"], e["action"], e["at"], e["reason"]) for e in out.get("events", [])]}


def json_option(command):
    """--json: what the command prints as JSON (the machine form), instead of text and tables."""
    return click.option("--json", "as_json", is_flag=True, help="print JSON (the machine form)")(command)


class _Bars:
    """A progress callback, ``(what, done, total)``, drawn as a bar on stderr: one bar per ``what``, in turn."""

    def __init__(self) -> None:
        self.what: str | None = None
        self.bar: Any = None
        self.done = 0

    def __call__(self, what: str, done: int, total: int) -> None:
        if what != self.what:
            self.close()
            self.what, self.done = what, 0
            self.bar = click.progressbar(length=max(total, 1), label=what, file=sys.stderr, show_pos=True,
                                         show_percent=True)
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@contextmanager
def _progress():
    """The progress callback of long work (verify, replay, report, archive): bars on stderr when it is a terminal,
    else None: a script's output, --json's included, is the output alone."""
    if not sys.stderr.isatty():
        yield None
        return
    bars = _Bars()
    try:
        yield bars
    finally:
        bars.close()


def remote_options(command):
    """--url and --key: the command acts on a running RPM through the client (app/client.py) instead of this
    environment's database; the output is the same either way."""
    command = click.option("--key", envvar="RPM_KEY", default=None,
                           help="with --url: the API key to call it with (env RPM_KEY)")(command)
    return click.option("--url", envvar="RPM_URL", default=None,
                        help="a running RPM to act on (env RPM_URL); default: this environment's database")(command)


@contextmanager
def _remote(url: str | None, key: str | None):
    """The client of --url, or None (the command works on the local database). An error answer is raised as the
    domain error a local refusal is (app/errors.py), so that both print the same one line."""
    if not url:
        yield None
        return
    from . import errors
    from .client import Client, RpmError

    if not key:
        raise click.UsageError("--url needs --key (or RPM_KEY): the API key to call it with")
    try:
        # (an operator at a terminal: an answer within 10 s, one more try where a repeat is harmless)
        client = Client(url, key, read_timeout=10.0, retries=1)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None
    try:
        yield client
    except RpmError as exc:
        # (the domain error of that status; any other 4xx a refusal of the request as such)
        kinds = {k.status: k for k in (errors.Unauthorized, errors.Forbidden, errors.NotFound, errors.Conflict,
                                        errors.Invalid, errors.TooManyRequests, errors.Unavailable)}
        status = exc.status or 0
        kind = kinds.get(status) or (errors.Invalid if 400 <= status < 500 else errors.ServiceError)
        found = exc.errors if isinstance(exc.errors, dict) else {"errors": exc.errors}
        # (no answer at all: say which call and where)
        raise kind(exc.message if exc.status is not None else str(exc), found) from None
    finally:
        client.close()


class Commands(click.Group):
    """Every command's expected refusal (a bad id, an unknown portfolio, a database down) is one line on
    stderr and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        import logging

        from .errors import ServiceError

        # psycopg's word that a pipeline could not end cleanly comes with the error that ended it, which is said
        # (written otherwise by logging's last resort, a second line)
        logging.getLogger("psycopg").addFilter(lambda record: not record.getMessage().startswith(
            "error ignored terminating"))
        try:
            return super().invoke(ctx)
        except Exception as exc:
            down = _database_down(exc)
            if down is not None:
                raise click.ClickException(down) from None
            if not isinstance(exc, ServiceError):
                raise
            details = "; ".join(f"{k}: {v if isinstance(v, str) else json.dumps(v, default=str)}"
                                for k, v in exc.errors.items())
            raise click.ClickException(f"{exc.message}{' (' + details + ')' if details else ''}") from None


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rpm", prog_name="rpm")
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
    url = _url(settings, create=True)
    upgrade(url, revision)
    _uow().ensure_default()
    _uow().ensure_partitions()
    click.echo(f"database at {revision}: {_safe_url(url)}")
    made = _bootstrap(settings)
    if made:
        click.echo(made)


@db.command("downgrade")
@click.option("--revision", required=True, help="the revision to go back to (`base`: no schema at all)")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def db_downgrade(revision: str, yes: bool) -> None:
    """Revert the migrations down to REVISION: the tables of the migrations above it are dropped, with their rows
    (down to `base`, every decision and the whole audit trail). Asks first, unless --yes."""
    from .store.migrate import downgrade

    url = _url(_settings())
    if not yes:
        click.confirm(f"Revert {_safe_url(url)} to revision {revision}? The tables of the migrations above it are "
                      "dropped with their rows" + (", the audit trail included" if revision == "base" else ""),
                      abort=True, err=True)
    downgrade(url, revision)
    click.echo(f"database at {revision}")


@main.command()
@click.option("--port", type=int, default=None, help="default: RPM_PORT or 8005")
@click.option("--host", default=None, help="default: RPM_HOST or 0.0.0.0")
@click.option("--workers", type=int, default=None)
@click.option("--threads", type=int, default=None)
def serve(port: int | None, host: str | None, workers: int | None, threads: int | None) -> None:
    """Take the port, apply migrations, then serve the API with gunicorn: once it listens, where, on which database
    and how to make a key are printed."""
    from .gunicorn_conf import BANNER
    from .store.migrate import upgrade

    settings = _settings()
    port = port or settings.port
    host = host or settings.host
    workers = workers or settings.workers
    threads = threads or settings.threads
    # the port first: taken, it is said at once (not after the migrations, nor as gunicorn's five attempts);
    # a socket systemd activated this process with is gunicorn's already
    listener = None if os.environ.get("LISTEN_PID") == str(os.getpid()) else _listen(host, port)
    url = _url(settings, create=True)
    upgrade(url)
    _uow().ensure_default()
    _ensure_partitions()
    _check_read_database(settings)
    bootstrapped = _bootstrap(settings)
    database = _safe_url(url)
    if settings.database_url is None:
        # the embedded server, started before gunicorn forks its workers (they are given its URL), is this
        # instance's: app/gunicorn_conf.py stops it when gunicorn exits
        data = _embedded_data(settings)
        os.environ["DATABASE_URL"] = url
        os.environ[EMBEDDED_DATA] = str(data)
        database = f"embedded PostgreSQL, data in {data} ({_safe_url(url)})"
    # printed by gunicorn's master once it listens (app/gunicorn_conf.py when_ready)
    os.environ[BANNER] = _banner(settings, host, port, f"{workers} worker{'s' * (workers != 1)} x {threads} threads", database,
                              bootstrapped)
    sys.stdout.flush()
    gunicorn = shutil.which("gunicorn", path=os.path.dirname(sys.executable)) or shutil.which("gunicorn")
    # the worker class, the control socket and the counters' folder are set in app/gunicorn_conf.py
    args = [gunicorn, "--config", "python:app.gunicorn_conf",
            "--bind", f"{host}:{port}", "--workers", str(workers), "--threads", str(threads),
            "--timeout", "30", "--graceful-timeout", "10",
            "--log-level", settings.log_level.lower(), "app:create_app()"]
    if listener is not None:
        # handed over as systemd's socket activation hands one (the first at fd 3, LISTEN_FDS, LISTEN_PID: this
        # process, which gunicorn becomes), so that nothing can take the port between; gunicorn re-executed
        # (USR2) passes it on the same way
        os.dup2(listener.fileno(), 3)
        os.set_inheritable(3, True)
        os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
    os.execv(gunicorn, args)


def _listen(host: str, port: int):
    """A socket listening at host:port, or one line saying why there cannot be one."""
    import errno
    import socket

    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        # a name with both (localhost: ::1 first in many hosts files) on IPv4, as gunicorn binds it
        family, kind, proto, _, address = min(found, key=lambda a: a[0] != socket.AF_INET)
    except socket.gaierror as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (as gunicorn: a restart binds at once)
        listener.bind(address)
        listener.listen(2048)  # (gunicorn's backlog; until the workers are up, connections wait in it)
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            raise click.ClickException(f"port {port} is in use ({host}:{port}): stop what listens there, or give "
                                       "another (--port, RPM_PORT)") from None
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return listener


def _banner(settings: Settings, host: str, port: int, processes: str, database: str, bootstrapped: str | None) -> str:
    """What `rpm serve` prints once it listens: where (the API, the console, the docs), on which database, how to
    make a key."""
    everywhere = host in ("0.0.0.0", "::", "")
    shown = "127.0.0.1" if everywhere else f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}"
    lines = ["=" * 78, " RPM - RISK & PORTFOLIO MANAGER", " Signals propose trades. RPM decides survival.", "=" * 78,
             f" listening on  {base}{f' (every interface, {host})' if everywhere else ''}, {processes}",
             f" database      {database}"]
    if settings.database_read_url:
        lines.append(f" reads         {_safe_url(settings.resolved_read_url())} (compliance reads)")
    lines += [f" console       {base}/console", f" API docs      {base}/docs (every operation; {base}/openapi.json)",
              f" keys          {_keys_hint(settings, bootstrapped)}", "=" * 78]
    return "\n".join(lines)


def _keys_hint(settings: Settings, made: str | None) -> str:
    """The banner's word on API keys: the bootstrap admin key's fate (``made``), else how to make one (here, where
    the service's database is)."""
    active = sum(k["state"] == "active" for k in _keys().list())
    where = (" with this DATABASE_URL" if settings.database_url
             else f" with RPM_INSTANCE_PATH={settings.instance_path}" if settings.instance_path else "")
    create = f"`rpm keys create --role trader --name signal-engine`{where} (roles: {', '.join(ROLES)})"
    if made:
        return f"{made}; more: {create}"
    if not active:
        return (f"none yet: make an admin's, `rpm keys create --role admin --name you`{where}, and a trader's, "
                f"{create}")
    return f"{active} active (`rpm keys list`); another: {create}"


@main.command()
@click.option("--url", default=None, help="a live RPM; default: an embedded one on a throw-away database")
@click.option("--trader-key", envvar="RPM_DEMO_TRADER_KEY", default=None, help="with --url (env RPM_DEMO_TRADER_KEY)")
@click.option("--admin-key", envvar="RPM_DEMO_ADMIN_KEY", default=None, help="with --url (env RPM_DEMO_ADMIN_KEY)")
@click.option("--database-url", default=None, help="embedded: use this database instead of a throw-away one")
@click.option("--keep", is_flag=True, help="embedded: keep the throw-away instance folder (its path is printed)")
def demo(url: str | None, trader_key: str | None, admin_key: str | None, database_url: str | None,
         keep: bool) -> None:
    """Sixteen scenarios — the nine of the original design, then instruments, capital, expiry and the firm — each on
    a portfolio of its own."""
    from .client import RpmError
    from .demo import Demo, EmbeddedRPM, HttpRPM

    if url:
        if not (trader_key and admin_key):
            raise click.UsageError("--url needs --trader-key and --admin-key (each scenario creates a portfolio)")
        try:
            rpm = HttpRPM(url, {"trader": trader_key, "admin": admin_key})
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--url") from None
    else:
        rpm = EmbeddedRPM(database_url, keep=keep)
    try:
        Demo(rpm, click.echo).run()
    except RpmError as exc:  # (a server down, a key refused: one line, not a traceback)
        raise click.ClickException(str(exc)) from None
    finally:
        rpm.close()


@main.command("replay")
@click.option("--from", "start", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), default=None,
              help="decided at or after (UTC)")
@click.option("--to", "end", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), default=None,
              help="decided before (UTC)")
@click.option("--portfolio", "portfolios", multiple=True, help="repeatable; default: every portfolio")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="a candidate configuration (JSON)")
@click.option("--preset", type=click.Choice(["conservative", "balanced", "aggressive"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="one JSON line per difference, then one per portfolio's summary")
def replay_command(start, end, portfolios, config_file, preset, as_json) -> None:
    """Re-decide stored decisions under a candidate configuration and report every one that would differ.

    Without --config or --preset, each decision is re-decided under the configuration it was made with:
    a complete, untampered trail and a deterministic engine give no difference at all.
    """
    from datetime import UTC

    from .compliance import replay
    from .presets import load_preset
    from .risk import RPMConfig

    if config_file and preset:
        raise click.UsageError("give --config or --preset, not both")
    candidate = (RPMConfig.from_dict(json.loads(Path(config_file).read_text())) if config_file
                 else load_preset(preset) if preset else None)
    from .services.portfolios import list_portfolios as portfolios_of

    uow = _uow()
    start = start.replace(tzinfo=UTC) if start else None
    end = end.replace(tzinfo=UTC) if end else None
    if not portfolios:
        portfolios = [p["portfolio_id"] for p in portfolios_of(uow, None)]
    for portfolio_id in portfolios:  # (an unknown one is an error, not an empty replay: exit 1, one line)
        uow.known(portfolio_id)
    label = f"preset {preset}" if preset else (config_file or "the configuration each decision was made with")
    differences, summaries = [], []
    with _progress() as progress:
        for portfolio_id in portfolios:
            for item in replay(uow, portfolio_id, start, end, candidate, progress):
                if as_json:  # (streamed: a JSON line per difference as it is found)
                    click.echo(json.dumps(item))
                elif item["type"] == "difference":
                    o, c = item["original"], item["counterfactual"]
                    differences.append((portfolio_id, item["seq"], item["decided_at"][:19], item["symbol"],
                                        o["status"], o["units"], o["reason"], c["status"], c["units"], c["reason"]))
                elif item["before"]["decisions"]:
                    b, a = item["before"], item["after"]
                    rejections = "; ".join(f"{r} {b['rejections_by_reason'].get(r, 0)} -> "
                                           f"{a['rejections_by_reason'].get(r, 0)}"
                                           for r in sorted({*b["rejections_by_reason"], *a["rejections_by_reason"]}))
                    summaries.append((portfolio_id, b["decisions"], item["differing"],
                                      f"{b['approval_rate']:.0%} -> {a['approval_rate']:.0%}",
                                      f"{b['total_approved_exposure']:,.2f} -> {a['total_approved_exposure']:,.2f}",
                                      rejections or None))
    if as_json:
        return
    if differences:
        _print(None, False, lines=[f"decisions that would differ under {label}:"],
               headers=("PORTFOLIO", "SEQ", "DECIDED", "SYMBOL", "STATUS", "UNITS", "REASON", "NOW", "UNITS NOW",
                        "REASON NOW"), rows=differences, after=[""])
    _print(None, False, headers=("PORTFOLIO", "DECISIONS", "DIFFERING", "APPROVAL RATE", "APPROVED EXPOSURE",
                                 "REJECTIONS BY REASON") if summaries else (), rows=summaries,
           after=[f"{sum(row[2] for row in summaries)} decision(s) would differ"])


@main.group()
def audit() -> None:
    """The audit trail: verify it, anchor it outside the database, prove a decision is in it."""


@audit.command("verify")
@click.option("--sink", type=click.Path(exists=True, file_okay=False), default=None,
              help="the signed checkpoints to check the chains against (default: the service's, RPM_AUDIT_SINK)")
@click.option("--public-key", "public_keys", type=click.Path(exists=True, dir_okay=False), multiple=True,
              help="a public key they may be signed with, repeatable (default: the service's signing key's and "
                   "RPM_AUDIT_TRUSTED_KEYS)")
@json_option
def audit_verify(sink: str | None, public_keys: tuple[str, ...], as_json: bool) -> None:
    """Verify every chain, what its rows name by hash, the state derived from it and the signed checkpoints;
    exit 1 and say where and what if anything is wrong."""
    import time

    from .anchor import Sink, load_public_key

    try:
        keys = [load_public_key(path) for path in public_keys] or None
    except ValueError as exc:
        raise click.ClickException(f"--public-key: {exc}") from None
    started = time.perf_counter()
    compliance = _app().extensions["rpm_compliance"]
    with _progress() as progress:
        report = compliance.verify(sink=Sink(sink) if sink else None, public_key=keys, actor=_operator(),
                                   progress=progress)
    elapsed = time.perf_counter() - started
    _print(report, as_json, headers=("CHAIN", "STATE", "RECORDS", "HEAD", "HEAD HASH", "PROBLEM"), rows=[
        (c["chain"], "OK" if c["ok"] else "BROKEN", c["count"], c["head_seq"], c["head_hash"][:16] + "...",
         None if c["ok"] else f"first broken sequence number {c['first_broken_seq']}: {c['problem']} "
                               f"({c['details'].get('detail')})") for c in report["chains"]],
           after=[*(f"BROKEN  {f['chain']}: {f['table']} {json.dumps(f['row'], default=str)}: {f['problem']}: "
                    f"{f['detail']}" for f in report.get("findings", [])),
                  f"{'OK' if report['ok'] else 'BROKEN'}: {report['count']} records verified against "
                  f"{report['checkpoints']} signed checkpoint(s) in {elapsed:.2f}s"])
    sys.exit(0 if report["ok"] else 1)


@audit.command("checkpoint")
@json_option
def audit_checkpoint(as_json: bool) -> None:
    """Sign a checkpoint of every chain that grew since its last, now, and append it to the sink."""

    anchor = _app().extensions["rpm_anchor"]
    made = anchor.checkpoint(force=True, wait=True)
    _print(made, as_json, headers=("CHAIN", "SIZE", "ROOT", "AT"), rows=[
        (c["statement"]["chain"], c["statement"]["size"], c["statement"]["root"][:16] + "...", c["statement"]["at"])
        for c in made])
    click.echo(f"{len(made)} checkpoint(s) appended to {anchor.sink.directory}", err=True)


@audit.command("public-key")
def audit_public_key() -> None:
    """Print the public key checkpoints are signed with (PEM): all a verifier needs."""
    from .anchor import public_pem

    click.echo(public_pem(_app().extensions["rpm_anchor"].signer.public), nl=False)


@audit.command("proof")
@click.argument("decision_id")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default="-", show_default=True)
def audit_proof(decision_id: str, out_file: str) -> None:
    """Write a decision's proof (the decision, its inclusion proof, a signed checkpoint) as JSON."""

    proof = _app().extensions["rpm_compliance"].proof(decision_id, None)
    data = json.dumps(proof, indent=2) + "\n"
    if out_file == "-":
        click.echo(data, nl=False)
    else:
        Path(out_file).write_text(data)
        click.echo(f"proof written to {out_file}", err=True)


@audit.command("check-proof")
@click.argument("proof_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False), required=True,
              help="the public key the checkpoint must be signed with (PEM)")
def audit_check_proof(proof_file: str, public_key: str) -> None:
    """Check a decision's proof offline, with nothing but the public key: no database, no service."""
    from .anchor import ProofError, check_proof, load_public_key

    try:
        key = load_public_key(public_key)
    except ValueError as exc:
        raise click.ClickException(f"--public-key: {exc}") from None
    try:
        with click.open_file(proof_file) as f:
            proof = json.load(f)
        held = check_proof(proof, key)
    except (ProofError, ValueError) as exc:
        click.echo(f"INVALID: {exc}")
        sys.exit(1)
    d, st = held["decision"], held["checkpoint"]
    click.echo(f"VALID: decision {d['id']} ({d['status']} {d['symbol']} {d['approved_units']} units, decided "
               f"{d['decided_at']}, portfolio {d['portfolio_id']}) is record {d['audit_seq']} of the trail")
    click.echo(f"       signed checkpoint: chain {st['chain']}, size {st['size']}, root {st['root'][:16]}..., "
               f"at {st['at']}, key {st['key_id']}, trail {st.get('trail')}")


@audit.command("consistency")
@click.option("--portfolio", "chain", default="default", show_default=True, help="the chain (or _system)")
@click.option("--from", "old", type=int, default=None, help="the older checkpoint's size (default: the first)")
@click.option("--to", "new", type=int, default=None, help="the newer checkpoint's size (default: the last)")
def audit_consistency(chain: str, old: int | None, new: int | None) -> None:
    """Prove that the trail only grew between two signed checkpoints of a chain."""

    result = _app().extensions["rpm_compliance"].consistency(chain, old, new)
    a, b = result["old"], result["new"]
    verdict = "CONSISTENT" if result["consistent"] else "INCONSISTENT"
    click.echo(f"{verdict}: {chain} size {a['size']} ({a['at']}) -> {b['size']} ({b['at']}), proof of "
               f"{len(result['consistency_proof'])} hash(es)")
    sys.exit(0 if result["consistent"] else 1)


@audit.command("archive")
@click.option("--before", "before", required=True, help="archive every month before this one (YYYY-MM)")
@click.option("--to", "directory", type=click.Path(file_okay=False), default="archive", show_default=True,
              help="the folder the months' files are written to")
@click.option("--drop", is_flag=True, help="drop the archived months' tables from the database too (after the files "
                                           "are written; without it they stay, detached)")
@json_option
def audit_archive(before: str, directory: str, drop: bool, as_json: bool) -> None:
    """Archive the decisions of every month before BEFORE: verified and under a signed checkpoint, exported with
    each decision's proof (compressed), then detached from the decisions; dropped only with --drop."""
    from .archive import Archiver
    from .store import partitions
    from .store.partitions import parse_month

    try:
        month = parse_month(before)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--before") from None
    compliance = _app().extensions["rpm_compliance"]
    with _progress() as progress:
        done = Archiver(_uow(), compliance, compliance.anchor).archive(month, directory, _operator(), drop=drop,
                                                                       progress=progress)
    if not done and not as_json:
        click.echo(f"nothing to archive before {partitions.month_text(month)}")
        return
    _print([a.to_dict() for a in done], as_json, headers=("MONTH", "DECISIONS", "FILE", "SHA256", "IN THE DATABASE"),
           rows=[(partitions.month_text(a.month), a.rows, a.file, a.sha256[:16] + "...",
                  "dropped" if a.dropped else "detached") for a in done])


@audit.command("verify-archive")
@click.argument("archive_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--public-key", "public_keys", type=click.Path(exists=True, dir_okay=False), multiple=True,
              help="a public key its checkpoints may be signed with, repeatable (default: the service's)")
@click.option("--offline", is_flag=True, help="without the database: the proofs alone (a file with decisions "
                                              "removed from it still passes; the database's record would refuse it)")
def audit_verify_archive(archive_file: str, public_keys: tuple[str, ...], offline: bool) -> None:
    """Check an archived month's file: every decision's proof against its signed checkpoint, the counts, and that
    it is the file the trail recorded (its SHA-256, its decisions of each chain)."""
    from .anchor import ProofError, load_public_key
    from .archive import matches_record, recorded, verify_file

    if offline and not public_keys:
        raise click.UsageError("--offline needs --public-key: the keys the checkpoints must be signed with")
    settings = _settings()
    own = Path(settings.audit_signing_key or Path(settings.instance_path or default_instance_path())
               / "audit-signing-key.pem")
    if not public_keys and not own.exists():  # (away from the service: a key of its own would be made, and wrong)
        raise click.UsageError(f"no signing key of this service here ({own}): give --public-key, the public key its "
                               "checkpoints are signed with (`rpm audit public-key` where the service runs)")
    try:
        keys = [load_public_key(path) for path in public_keys] or _app().extensions["rpm_compliance"].anchor.trusted
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--public-key") from None
    try:
        held = verify_file(archive_file, keys)
    except ProofError as exc:
        raise click.ClickException(f"BROKEN: {exc}") from None
    if not offline:
        with _uow().reading() as session:
            wrong = matches_record(held, recorded(session, held["month"]))
        if wrong:
            raise click.ClickException(f"BROKEN: {wrong}")
    click.echo(f"OK: {held['rows']} decision(s) of {held['month']} in {len(held['chains'])} chain(s), each proven "
               f"against its signed checkpoint (sha256 {held['sha256']})"
               + ("" if offline else "; the file the trail records"))


@db.command("partitions")
@json_option
def db_partitions(as_json: bool) -> None:
    """The decisions' partitions by month (making this month's and the next ones if missing), and the archived."""
    from sqlalchemy import select, text

    from .store import models as m
    from .store import partitions

    made = _uow().ensure_partitions()
    with _uow().reading() as session:
        rows = dict(session.execute(text(
            "SELECT c.relname, c.reltuples::bigint FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            f"WHERE i.inhparent = '{partitions.TABLE}'::regclass")).all())
        archived = [(a.month, a.archived_at, a.rows, a.file, a.dropped_at) for a in
                    session.scalars(select(m.AuditArchive).order_by(m.AuditArchive.month))]
    # (rows: the planner's estimate, unknown (None) until the table was analysed)
    attached = [{"partition": name, "state": "attached", "rows": estimate if estimate > 0 else None, "file": None}
                for name, estimate in sorted(rows.items())]
    gone = [{"partition": partitions.name_of(month), "state": "dropped" if dropped else "detached", "rows": count,
             "file": file, "archived_at": at} for month, at, count, file, dropped in archived]
    _print({"made": [partitions.name_of(month) for month in made], "partitions": attached + gone}, as_json,
           lines=[f"made {partitions.name_of(month)}" for month in made],
           headers=("PARTITION", "STATE", "ROWS", "ARCHIVED", "FILE"),
           rows=[(p["partition"], p["state"], "~" + str(p["rows"]) if p["rows"] else "not analysed yet", None, None)
                 for p in attached] + [(p["partition"], p["state"], p["rows"], f"{p['archived_at']:%Y-%m-%d}",
                                        p["file"]) for p in gone])


@main.group()
def keys() -> None:
    """API keys: create (shown once), list, revoke."""


@keys.command("create")
@click.option("--role", type=click.Choice(list(ROLES)), required=True)
@click.option("--portfolio", "portfolios", multiple=True, help="limit the key to this portfolio (repeatable)")
@click.option("--name", default=None, help="who uses the key (recorded with every decision and action)")
@click.option("--expires-in-days", type=int, default=None)
def keys_create(role: str, portfolios: tuple[str, ...], name: str | None, expires_in_days: int | None) -> None:
    """Create a key. It is printed once and stored only as a hash."""
    from datetime import timedelta

    key, record = _keys().create(role, name, list(portfolios) or None, _operator(),
                                 timedelta(days=expires_in_days) if expires_in_days else None)
    click.echo(key)
    click.echo(f"# {record['name']} ({record['role']}, portfolios: {', '.join(record['portfolios'] or ['all'])}, "
               f"id {record['id']}): store it now, it cannot be shown again", err=True)


@keys.command("list")
@json_option
def keys_list(as_json: bool) -> None:
    """Every key: prefix, id, role, state, name, portfolios, expiry (never the key)."""
    listed = _keys().list()
    _print(listed, as_json, headers=("PREFIX", "ID", "ROLE", "STATE", "NAME", "PORTFOLIOS", "EXPIRES"),
           rows=[(k["prefix"], k["id"], k["role"], k["state"], k["name"], k["portfolios"] or "*", k["expires_at"])
                 for k in listed])


@keys.command("revoke")
@click.argument("key_id_or_prefix")
@click.option("--reason", default=None)
def keys_revoke(key_id_or_prefix: str, reason: str | None) -> None:
    """Revoke a key by its id or prefix: refused from the next request on."""
    record = _keys().revoke(key_id_or_prefix, _operator(), reason)
    click.echo(f"revoked {record['prefix']} ({record['name']}) at {record['revoked_at']}")


@main.command()
@click.option("--reason", required=True, help="why trading is halted (audited)")
@click.option("--portfolio", "portfolio_id", default="default", show_default=True)
@remote_options
@json_option
def halt(reason: str, portfolio_id: str, url: str | None, key: str | None, as_json: bool) -> None:
    """Halt trading: only reducing trades pass until a manual resume."""
    from .services import operator

    with _remote(url, key) as remote:
        out = (remote.halt(reason, portfolio_id=portfolio_id) if remote
               else operator.halt(_uow(), portfolio_id, reason, _operator()))
    _print(out, as_json, **_trading_text(f"halted portfolio {out['portfolio_id']} (reason: {reason})", out))


@main.command()
@click.option("--force", is_flag=True, help="resume during an automatic switch's cooldown")
@click.option("--reason", default=None, help="required with --force (audited)")
@click.option("--portfolio", "portfolio_id", default="default", show_default=True)
@remote_options
@json_option
def resume(force: bool, reason: str | None, portfolio_id: str, url: str | None, key: str | None,
           as_json: bool) -> None:
    """Resume trading (refused during a cooldown unless --force with --reason)."""
    from .services import operator

    with _remote(url, key) as remote:
        out = (remote.resume(force=force, reason=reason, portfolio_id=portfolio_id) if remote
               else operator.resume(_uow(), portfolio_id, _operator(), force=force, reason=reason))
    _print(out, as_json, **_trading_text(f"resumed portfolio {out['portfolio_id']}"
                                         + (f" (forced, reason: {reason})" if force else ""), out))


@main.command()
@click.option("--portfolio", "portfolio_id", default="default", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="the full health document")
@remote_options
def status(portfolio_id: str, as_json: bool, url: str | None, key: str | None) -> None:
    """Trading state, kill switches, equity and drawdown."""
    from .services import reading

    with _remote(url, key) as remote:
        health = remote.health(portfolio_id) if remote else reading.health(_uow(), portfolio_id)
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



@main.group()
def instruments() -> None:
    """The instrument table of a portfolio (part of its configuration)."""


@instruments.command("list")
@click.option("--portfolio", "portfolio_id", default="default", show_default=True)
@remote_options
@json_option
def instruments_list(portfolio_id: str, url: str | None, key: str | None, as_json: bool) -> None:
    """Print the instruments a portfolio lists, with its configuration version."""
    from .services import reading

    with _remote(url, key) as remote:
        table = remote.instruments(portfolio_id) if remote else reading.get_instruments(_uow(), portfolio_id)
    number = lambda v: f"{v:,.8f}".rstrip("0").rstrip(".")  # noqa: E731  (1e-08 as 0.00000001)
    _print(table, as_json,
           lines=[f"{portfolio_id}: configuration version {table['version']} ({table['config_hash'][:16]}...)"],
           headers=("SYMBOL", "CLASS", "CURRENCY", "MULTIPLIER", "OTHER"),
           rows=[(symbol, spec["asset_class"], spec["currency"], number(spec["multiplier"]),
                  ", ".join(f"{k} {number(v)}" for k, v in spec.items()
                            if k not in ("asset_class", "currency", "multiplier")) or None)
                 for symbol, spec in sorted(table["instruments"].items())],
           after=[f"(others: {table['unlisted']})"])


@instruments.command("set")
@click.argument("table_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--reason", required=True, help="why (audited)")
@click.option("--portfolio", "portfolio_id", default="default", show_default=True)
@remote_options
def instruments_set(table_file: str, reason: str, portfolio_id: str, url: str | None, key: str | None) -> None:
    """Replace a portfolio's instrument table with a JSON file's ({symbol: {asset_class, currency, ...}}): a new
    configuration version."""
    from .services import operator

    try:
        with click.open_file(table_file) as f:
            table = json.load(f)
    except ValueError as exc:
        raise click.ClickException(f"{table_file}: not JSON ({exc})") from None
    if not isinstance(table, dict):
        raise click.ClickException(f"{table_file}: must be a JSON object of symbol -> instrument")
    with _remote(url, key) as remote:
        out = (remote.put_instruments(table, reason=reason, portfolio_id=portfolio_id) if remote
               else operator.put_instruments(_uow(), portfolio_id, table, reason, _operator()))
    click.echo(f"{portfolio_id}: configuration version {out['version']} ({out['config_hash'][:16]}...), "
               f"{len(table)} instrument(s)")


@main.group()
def report() -> None:
    """Reports a risk officer files."""


@report.command("eod")
@click.option("--date", "day", required=True, type=click.DateTime(formats=["%Y-%m-%d"]),
              help="the firm's trading day (00:00 UTC to 00:00 UTC)")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv", "html"]), default="text", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, writable=True), default=None, help="default: stdout")
@remote_options
@click.option("--json", "as_json", is_flag=True, help="print JSON (the machine form): --format json")
def report_eod(day, fmt: str, output: str | None, url: str | None, key: str | None, as_json: bool) -> None:
    """The end-of-day report: per portfolio, group and the firm, the books at the cut-off, the day's PnL, limits'
    peak use, switches tripped, decisions by status and reason, admin actions. The same whenever it is made."""
    from .services import report as eod

    # (remote too, the JSON: formatted here, as the local report is)
    with _remote(url, key) as remote, _progress() as progress:
        out = remote.eod_report(day.date()) if remote else eod.eod(_uow(), day.date(), progress)
    fmt = "json" if as_json else fmt
    text = (json.dumps(out, indent=2) if fmt == "json" else eod.as_csv(out) if fmt == "csv"
            else eod.as_html(out) if fmt == "html" else eod.as_text(out))
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        Path(output).write_text(text)
        click.echo(f"end-of-day report of {out['trading_day']} written to {output}")


@main.command("groups")
@remote_options
@json_option
def groups_tree(url: str | None, key: str | None, as_json: bool) -> None:
    """The firm, its groups and the portfolios under each, with their limits and trading states."""
    from .services import firm

    def rows(node, depth=0):
        limits = ", ".join(f"{k} {v:,g}" for k, v in node["limits"].items()) or "no limits"
        yield "  " * depth + node["id"], "firm" if depth == 0 else "group", node["trading_state"], limits
        for child in node["groups"]:
            yield from rows(child, depth + 1)
        for pid in node["portfolios"]:
            yield "  " * (depth + 1) + pid, "portfolio", None, None

    with _remote(url, key) as remote:
        tree = remote.groups() if remote else firm.tree(_uow())
    _print(tree, as_json, headers=("ID", "KIND", "STATE", "LIMITS"), rows=rows(tree))


if __name__ == "__main__":
    main()
