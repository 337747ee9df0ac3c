"""The `rpm` command: serve, db, halt, resume, status (and more as the service grows)."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import sys
from pathlib import Path

import click

from .gunicorn_conf import EMBEDDED_DATA
from .keys import ROLES
from .settings import Settings, SettingsError, default_instance_path, embedded_data


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _url(settings: Settings) -> str:
    return settings.resolved_database_url(settings.instance_path or default_instance_path())


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _app():
    """The app for one command; its database connections are closed when the command ends."""
    from .factory import create_app

    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    app = root.meta.get("rpm_app") if root else None
    if app is None:
        app = create_app(_settings())
        if root is not None:
            root.meta["rpm_app"] = app
            root.call_on_close(app.extensions["rpm"].db.dispose)
    return app


def _uow():
    """The unit of work the use cases run in."""
    return _app().extensions["rpm"].uow


def _keys():
    return _app().extensions["rpm_keys"]


def _bootstrap(settings: Settings) -> None:
    if settings.bootstrap_admin_key:
        result = _keys().ensure_bootstrap(settings.bootstrap_admin_key)
        click.echo(f" bootstrap admin key {settings.bootstrap_admin_key[:12]}...: "
                   f"{'created' if result['created'] else 'kept'}"
                   f"{' (REVOKED: it will be refused)' if result['revoked'] else ''}")


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


def _operator():
    from .services import Actor

    return Actor(f"cli:{getpass.getuser()}", "admin")


def _print(payload) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


class Commands(click.Group):
    """Every command's expected refusal (a bad id, an unknown portfolio, a database down) is one line on
    stderr and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        from .errors import ServiceError

        try:
            return super().invoke(ctx)
        except ServiceError as exc:
            details = "; ".join(f"{k}: {v}" for k, v in exc.errors.items())
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
    upgrade(_url(settings), revision)
    _uow().ensure_default()
    _uow().ensure_partitions()
    click.echo(f"database at {revision}: {_safe_url(_url(settings))}")
    _bootstrap(settings)


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


ENDPOINTS = [
    ("POST", "/process_trade", "decide one trade intent (main endpoint)"),
    ("POST", "/what_if", "the decision an intent would get now, nothing stored"),
    ("POST", "/marks", "latest prices: revalue, evaluate kill switches"),
    ("POST", "/fills", "execution report for an approved decision"),
    ("POST", "/positions/{symbol}/close", "close a position (or units of it) at a price"),
    ("POST", "/positions/{symbol}/correct", "set a position to the broker's (admin)"),
    ("POST", "/capital", "a deposit or a withdrawal (admin)"),
    ("GET", "/portfolio", "positions, exposures, equity, PnL, drawdown"),
    ("GET", "/health", "kill switches, trading state, metrics, database"),
    ("GET", "/health/live, /health/ready", "liveness, readiness"),
    ("GET", "/metrics", "decision counts, approval rate, rejections, latency"),
    ("POST", "/halt, /resume", "manual halt and resume (admin)"),
    ("GET/PUT", "/config", "configuration, versioned"),
    ("GET/PUT", "/instruments", "the instrument table (part of the configuration)"),
    ("GET", "/decisions/{id}/proof", "a decision's proof against a signed checkpoint"),
    ("GET", "/firm, /groups/{id}", "the firm's and a group's aggregate, limits used, switches"),
    ("POST", "/groups, /groups/{id}/members", "groups and who is in them (admin)"),
    ("PUT", "/groups/{id}/limits", "a group's or the firm's limits (admin)"),
    ("POST", "/groups/{id}/halt, /resume", "halt and resume a group or the firm (admin)"),
    ("POST", "/firm/marks", "firm-wide prices for every portfolio"),
    ("GET", "/reports/eod?date=D", "the end-of-day report (JSON, CSV, HTML)"),
    ("GET", "/events", "risk events as they are committed (Server-Sent Events; Last-Event-ID)"),
    ("POST/GET", "/webhooks", "endpoints risk events are delivered to, signed (admin)"),
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
    _uow().ensure_default()
    _ensure_partitions()
    _check_read_database(settings)
    _bootstrap(settings)
    port = port or settings.port
    host = host or settings.host
    workers = workers or settings.workers
    threads = threads or settings.threads
    database = _safe_url(url)
    if settings.database_url is None:
        # the embedded server, started before gunicorn forks its workers (they are given its URL), is this
        # instance's: app/gunicorn_conf.py stops it when gunicorn exits
        data = embedded_data(settings.instance_path or default_instance_path())
        os.environ["DATABASE_URL"] = url
        os.environ[EMBEDDED_DATA] = str(data)
        database = f"embedded PostgreSQL, data in {data} ({_safe_url(url)})"
    click.echo("=" * 78)
    click.echo(" RPM - RISK & PORTFOLIO MANAGER")
    click.echo(" Signals propose trades. RPM decides survival.")
    click.echo("=" * 78)
    click.echo(f" listening on http://{host}:{port}  ({workers} workers x {threads} threads)")
    click.echo(f" database: {database}")
    if settings.database_read_url:
        click.echo(f" compliance reads: {_safe_url(settings.resolved_read_url())}")
    click.echo(" endpoints:")
    for method, path, what in ENDPOINTS:
        click.echo(f"   {method:8} {path:32} {what}")
    click.echo("=" * 78, nl=True)
    sys.stdout.flush()
    gunicorn = shutil.which("gunicorn", path=os.path.dirname(sys.executable)) or shutil.which("gunicorn")
    # the worker class, the control socket and the counters' folder are set in app/gunicorn_conf.py
    args = [gunicorn, "--config", "python:app.gunicorn_conf",
            "--bind", f"{host}:{port}", "--workers", str(workers), "--threads", str(threads),
            "--timeout", "30", "--graceful-timeout", "10",
            "--log-level", settings.log_level.lower(), "app:create_app()"]
    os.execv(gunicorn, args)


@main.command()
@click.option("--url", default=None, help="a live RPM; default: an embedded one on a throw-away database")
@click.option("--trader-key", envvar="RPM_DEMO_TRADER_KEY", default=None, help="with --url (env RPM_DEMO_TRADER_KEY)")
@click.option("--admin-key", envvar="RPM_DEMO_ADMIN_KEY", default=None, help="with --url (env RPM_DEMO_ADMIN_KEY)")
@click.option("--database-url", default=None, help="embedded: use this database instead of a throw-away one")
@click.option("--keep", is_flag=True, help="embedded: keep the throw-away instance folder (its path is printed)")
def demo(url: str | None, trader_key: str | None, admin_key: str | None, database_url: str | None,
         keep: bool) -> None:
    """The nine scenarios of the original design, each on a portfolio of its own."""
    from .demo import Demo, EmbeddedRPM, HttpRPM

    if url:
        if not (trader_key and admin_key):
            raise click.UsageError("--url needs --trader-key and --admin-key (each scenario creates a portfolio)")
        rpm = HttpRPM(url, {"trader": trader_key, "admin": admin_key})
    else:
        rpm = EmbeddedRPM(database_url, keep=keep)
    try:
        Demo(rpm, click.echo).run()
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
@click.option("--json", "as_json", is_flag=True, help="one JSON line per difference, then the summary")
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
    total_differing = 0
    for portfolio_id in portfolios:
        for item in replay(uow, portfolio_id, start, end, candidate):
            if as_json:
                click.echo(json.dumps(item))
                continue
            if item["type"] == "difference":
                o, c = item["original"], item["counterfactual"]
                click.echo(f"  {portfolio_id} #{item['seq']:<5} {item['decided_at'][:19]} {item['symbol']:7} "
                           f"{o['status']:8} {o['units']:>12,.2f} {o['reason'] or '':18} -> "
                           f"{c['status']:8} {c['units']:>12,.2f} {c['reason'] or ''}")
            else:
                total_differing += item["differing"]
                b, a = item["before"], item["after"]
                if item["before"]["decisions"]:
                    click.echo(f"{portfolio_id}: {b['decisions']} decisions, {item['differing']} would differ under "
                               f"{label}")
                    click.echo(f"    approval rate {b['approval_rate']:.0%} -> {a['approval_rate']:.0%}; approved "
                               f"exposure {b['total_approved_exposure']:,.2f} -> {a['total_approved_exposure']:,.2f}")
                    click.echo(f"    rejections {b['rejections_by_reason']} -> {a['rejections_by_reason']}")
    if not as_json:
        click.echo(f"{total_differing} decision(s) would differ")


@main.group()
def audit() -> None:
    """The audit trail: verify it, anchor it outside the database, prove a decision is in it."""


@audit.command("verify")
@click.option("--sink", type=click.Path(exists=True, file_okay=False), default=None,
              help="the signed checkpoints to check the chains against (default: the service's, RPM_AUDIT_SINK)")
@click.option("--public-key", "public_keys", type=click.Path(exists=True, dir_okay=False), multiple=True,
              help="a public key they may be signed with, repeatable (default: the service's signing key's and "
                   "RPM_AUDIT_TRUSTED_KEYS)")
def audit_verify(sink: str | None, public_keys: tuple[str, ...]) -> None:
    """Verify every chain, what its rows name by hash, the state derived from it and the signed checkpoints;
    exit 1 and say where and what if anything is wrong."""
    import time

    from .anchor import Sink, load_public_key
    from .errors import ServiceError

    try:
        keys = [load_public_key(path) for path in public_keys] or None
    except ValueError as exc:
        raise click.ClickException(f"--public-key: {exc}") from None
    started = time.perf_counter()
    try:
        report = _app().extensions["rpm_compliance"].verify(sink=Sink(sink) if sink else None, public_key=keys,
                                                                   actor=_operator())
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None
    elapsed = time.perf_counter() - started
    for chain in report["chains"]:
        if chain["ok"]:
            click.echo(f"OK      {chain['chain']}: {chain['count']} records, head {chain['head_seq']} "
                       f"{chain['head_hash'][:16]}...")
        else:
            click.echo(f"BROKEN  {chain['chain']}: first broken sequence number {chain['first_broken_seq']}: "
                       f"{chain['problem']} ({chain['details'].get('detail')})")
    for f in report.get("findings", []):
        click.echo(f"BROKEN  {f['chain']}: {f['table']} {json.dumps(f['row'], default=str)}: {f['problem']}: "
                   f"{f['detail']}")
    click.echo(f"{'OK' if report['ok'] else 'BROKEN'}: {report['count']} records verified against "
               f"{report['checkpoints']} signed checkpoint(s) in {elapsed:.2f}s")
    sys.exit(0 if report["ok"] else 1)


@audit.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign a checkpoint of every chain that grew since its last, now, and append it to the sink."""
    from .errors import ServiceError

    anchor = _app().extensions["rpm_anchor"]
    try:
        made = anchor.checkpoint(force=True, wait=True)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None
    for c in made:
        st = c["statement"]
        click.echo(f"{st['chain']}: size {st['size']}, root {st['root'][:16]}..., at {st['at']}")
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
    from .errors import ServiceError

    try:
        proof = _app().extensions["rpm_compliance"].proof(decision_id, None)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None
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
    from .errors import ServiceError

    try:
        result = _app().extensions["rpm_compliance"].consistency(chain, old, new)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None
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
def audit_archive(before: str, directory: str, drop: bool) -> None:
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
    done = Archiver(_uow(), compliance, compliance.anchor).archive(month, directory, _operator(), drop=drop)
    for archived in done:
        click.echo(f"{partitions.month_text(archived.month)}: {archived.rows} decision(s) -> {archived.file} (sha256 "
                   f"{archived.sha256[:16]}...){', dropped from the database' if archived.dropped else ', detached'}")
    if not done:
        click.echo(f"nothing to archive before {partitions.month_text(month)}")


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
def db_partitions() -> None:
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
    for month in made:
        click.echo(f"made {partitions.name_of(month)}")
    for name, estimate in sorted(rows.items()):
        # (the planner's estimate: unknown until the table was analysed)
        click.echo(f"{name:<24} {'~' + str(estimate) + ' rows' if estimate > 0 else 'not analysed yet'}")
    for month, at, count, file, dropped in archived:
        click.echo(f"{partitions.name_of(month):<24} archived {at:%Y-%m-%d} ({count} rows, {file})"
                   f"{', dropped' if dropped else ', detached'}")


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
@click.option("--json", "as_json", is_flag=True, help="as JSON")
def keys_list(as_json: bool) -> None:
    """Every key: prefix, id, role, state, name, portfolios, expiry (never the key)."""
    listed = _keys().list()
    if as_json:
        _print(listed)
        return
    click.echo(f"{'PREFIX':12}  {'ID':36}  {'ROLE':10} {'STATE':8} {'NAME':24} {'PORTFOLIOS':16} EXPIRES")
    for k in listed:
        click.echo(f"{k['prefix']:12}  {k['id']:36}  {k['role']:10} {k['state']:8} {k['name']:24} "
                   f"{','.join(k['portfolios'] or ['*']):16} {k['expires_at'] or '-'}")


@keys.command("revoke")
@click.argument("key_id_or_prefix")
@click.option("--reason", default=None)
def keys_revoke(key_id_or_prefix: str, reason: str | None) -> None:
    """Revoke a key by its id or prefix: refused from the next request on."""
    from .errors import ServiceError

    try:
        record = _keys().revoke(key_id_or_prefix, _operator(), reason)
    except ServiceError as exc:
        click.echo(f"refused: {exc.message}", err=True)
        sys.exit(1)
    click.echo(f"revoked {record['prefix']} ({record['name']}) at {record['revoked_at']}")


@main.command()
@click.option("--reason", required=True, help="why trading is halted (audited)")
@click.option("--portfolio", "portfolio_id", default="default", show_default=True)
def halt(reason: str, portfolio_id: str) -> None:
    """Halt trading: only reducing trades pass until a manual resume."""
    from .services import operator

    _print(operator.halt(_uow(), portfolio_id, reason, _operator()))


@main.command()
@click.option("--force", is_flag=True, help="resume during an automatic switch's cooldown")
@click.option("--reason", default=None, help="required with --force (audited)")
@click.option("--portfolio", "portfolio_id", default="default", show_default=True)
def resume(force: bool, reason: str | None, portfolio_id: str) -> None:
    """Resume trading (refused during a cooldown unless --force with --reason)."""
    from .errors import ServiceError
    from .services import operator

    try:
        _print(operator.resume(_uow(), portfolio_id, _operator(), force=force, reason=reason))
    except ServiceError as exc:
        click.echo(f"refused: {exc.message} {json.dumps(exc.errors)}", err=True)
        sys.exit(1)


@main.command()
@click.option("--portfolio", "portfolio_id", default="default", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="the full health document")
def status(portfolio_id: str, as_json: bool) -> None:
    """Trading state, kill switches, equity and drawdown."""
    from .services import reading

    health = reading.health(_uow(), portfolio_id)
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
def instruments_list(portfolio_id: str) -> None:
    """Print the instruments a portfolio lists, with its configuration version."""
    from .errors import ServiceError
    from .services import reading

    try:
        table = reading.get_instruments(_uow(), portfolio_id)
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{portfolio_id}: configuration version {table['version']} ({table['config_hash'][:16]}...)")
    for symbol, spec in sorted(table["instruments"].items()):
        number = lambda v: f"{v:,.8f}".rstrip("0").rstrip(".")  # noqa: E731  (1e-08 as 0.00000001)
        extra = ", ".join(f"{k} {number(v)}" for k, v in spec.items()
                          if k not in ("asset_class", "currency", "multiplier"))
        click.echo(f"  {symbol:<10} {spec['asset_class']:<8} {spec['currency']}  x{number(spec['multiplier'])}"
                   + (f"  {extra}" if extra else ""))
    click.echo(f"  (others: {table['unlisted']})")


@instruments.command("set")
@click.argument("table_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--reason", required=True, help="why (audited)")
@click.option("--portfolio", "portfolio_id", default="default", show_default=True)
def instruments_set(table_file: str, reason: str, portfolio_id: str) -> None:
    """Replace a portfolio's instrument table with a JSON file's ({symbol: {asset_class, currency, ...}}): a new
    configuration version."""
    from .errors import Invalid, ServiceError
    from .services import operator

    try:
        with click.open_file(table_file) as f:
            table = json.load(f)
    except ValueError as exc:
        raise click.ClickException(f"{table_file}: not JSON ({exc})") from None
    if not isinstance(table, dict):
        raise click.ClickException(f"{table_file}: must be a JSON object of symbol -> instrument")
    try:
        out = operator.put_instruments(_uow(), portfolio_id, table, reason, _operator())
    except Invalid as exc:
        raise click.ClickException(f"{exc.message}: {json.dumps(exc.errors)}") from None
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None
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
def report_eod(day, fmt: str, output: str | None) -> None:
    """The end-of-day report: per portfolio, group and the firm, the books at the cut-off, the day's PnL, limits'
    peak use, switches tripped, decisions by status and reason, admin actions. The same whenever it is made."""
    from .errors import ServiceError
    from .services import report as eod

    try:
        out = eod.eod(_uow(), day.date())
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from None
    text = (json.dumps(out, indent=2) if fmt == "json" else eod.as_csv(out) if fmt == "csv"
            else eod.as_html(out) if fmt == "html" else eod.as_text(out))
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        Path(output).write_text(text)
        click.echo(f"end-of-day report of {out['trading_day']} written to {output}")


@main.command("groups")
def groups_tree() -> None:
    """The firm, its groups and the portfolios under each, with their limits and trading states."""
    from .services import firm

    def show(node, depth=0):
        limits = ", ".join(f"{k} {v:,g}" for k, v in node["limits"].items()) or "no limits"
        click.echo(f"{'  ' * depth}{node['id']}  [{node['trading_state']}]  {limits}")
        for child in node["groups"]:
            show(child, depth + 1)
        for pid in node["portfolios"]:
            click.echo(f"{'  ' * (depth + 1)}- {pid}")

    show(firm.tree(_uow()))


if __name__ == "__main__":
    main()
