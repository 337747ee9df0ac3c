"""The compliance side: query and export decisions, audit events, verify the audit chains."""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text

from .errors import Conflict, Invalid, NotFound, Unavailable
from .risk import domain
from .services import UnitOfWork, decision_payload
from .services.unit_of_work import admin_row
from .store import audit
from .store import models as m
from .store.audit import Progress
from .store.database import DB_ERRORS, NO_IDLE_LIMIT, DatabaseUnavailable
from .store.repository import decision_by_id

log = logging.getLogger("rpm.audit")
# the last line of a CSV export the database cut short (its connection is then closed without the transfer's end)
EXPORT_INCOMPLETE = "EXPORT INCOMPLETE"
REPLAY_PROGRESS_EVERY = 100  # decisions re-decided between two calls of a replay's progress callback

CSV_COLUMNS = ("portfolio_id", "seq", "id", "decided_at", "intent_id", "symbol", "direction", "status",
               "reason_code", "approved_units", "price", "reducing", "config_hash", "config_version", "key_id",
               "key_name", "key_role", "message", "row_hash")


@dataclass(frozen=True)
class DecisionFilter:
    portfolios: tuple[str, ...] | None  # None: every portfolio
    start: datetime | None = None
    end: datetime | None = None
    symbol: str | None = None
    status: str | None = None
    reason: str | None = None
    config_hash: str | None = None
    intent_id: str | None = None
    key_id: str | None = None
    key_name: str | None = None

    def where(self) -> list[Any]:
        d = m.Decision
        conds: list[Any] = []
        if self.portfolios is not None:
            conds.append(d.portfolio_id.in_(self.portfolios) if len(self.portfolios) > 1
                         else d.portfolio_id == self.portfolios[0])
        for column, value in ((d.symbol, self.symbol), (d.status, self.status), (d.reason_code, self.reason),
                              (d.config_hash, self.config_hash), (d.intent_id, self.intent_id),
                              (d.key_id, self.key_id), (d.key_name, self.key_name)):
            if value is not None:
                conds.append(column == value)
        if self.start is not None:
            conds.append(d.decided_at >= self.start)
        if self.end is not None:
            conds.append(d.decided_at < self.end)
        return conds


def encode_cursor(portfolio_id: str, seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([portfolio_id, seq]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        portfolio_id, seq = json.loads(raw)
        if (not domain.PORTFOLIO_ID.matches(portfolio_id) or type(seq) is not int or not 0 <= seq < 2**63):
            raise ValueError
        return portfolio_id, seq
    except (ValueError, TypeError, json.JSONDecodeError):
        raise Invalid("invalid cursor", {"cursor": ["not a cursor this API returned"]}) from None


def summary(row: m.Decision) -> dict[str, Any]:
    """A decision as a listing shows it (the full breakdown is at GET /decisions/{id})."""
    return {
        "portfolio_id": row.portfolio_id, "seq": row.seq, "id": row.id, "decided_at": row.decided_at.isoformat(),
        "intent_id": row.intent_id, "symbol": row.symbol, "direction": row.direction, "status": row.status,
        "reason_code": row.reason_code, "approved_units": float(row.approved_units), "price": float(row.price),
        "reducing": row.reducing, "config_hash": row.config_hash, "config_version": row.config_version,
        "key_id": row.key_id, "key_name": row.key_name, "key_role": row.key_role, "message": row.message,
        "row_hash": row.row_hash,
    }


class Compliance:
    def __init__(self, uow: UnitOfWork, anchor: Any = None):
        self.uow = uow
        self.anchor = anchor  # app.anchor.Anchor: the checkpoints' sink and signing key

    def _query(self, flt: DecisionFilter, after: tuple[str, int] | None, *columns: Any, newest_first: bool = False):
        """Decisions by portfolio and sequence number (``newest_first``: both descending), after a cursor."""
        d = m.Decision
        query = select(*columns) if columns else select(d)
        query = query.where(*flt.where())
        if after is not None:
            portfolio_id, seq = after
            if newest_first:
                query = query.where((d.portfolio_id < portfolio_id) | ((d.portfolio_id == portfolio_id) & (d.seq < seq)))
            else:
                query = query.where((d.portfolio_id > portfolio_id) | ((d.portfolio_id == portfolio_id) & (d.seq > seq)))
        if newest_first:
            return query.order_by(d.portfolio_id.desc(), d.seq.desc())
        return query.order_by(d.portfolio_id, d.seq)

    def decisions(self, flt: DecisionFilter, limit: int, cursor: str | None, newest_first: bool = False) -> dict[str, Any]:
        after = decode_cursor(cursor) if cursor else None
        with self.uow.history() as session:
            rows = session.scalars(self._query(flt, after, newest_first=newest_first).limit(limit + 1)).all()
            page = rows[:limit]
            more = len(rows) > limit
            return {
                "decisions": [summary(r) for r in page],
                "count": len(page),
                "next_cursor": encode_cursor(page[-1].portfolio_id, page[-1].seq) if more and page else None,
            }

    def decisions_csv(self, flt: DecisionFilter) -> Iterator[str]:
        """Every matching decision as CSV, streamed from a server-side cursor (bounded memory).

        The query is opened before the first byte is sent, so an unreachable database is still a 503.
        """
        columns = [getattr(m.Decision, c) for c in CSV_COLUMNS]
        query = self._query(flt, None, *columns)
        slot = self.uow.history_slot()
        slot.__enter__()  # (held until the last row is sent)
        try:
            with self.uow.history_errors():
                try:
                    conn = self.uow.history_db.engine.connect()
                    conn.execute(text(NO_IDLE_LIMIT))  # its client may read slowly: idle between batches, not stuck
                    self.uow.note_history_read(conn)
                    result = conn.execution_options(stream_results=True, yield_per=2000).execute(query)
                except DB_ERRORS as exc:
                    raise DatabaseUnavailable(f"database unavailable ({type(exc).__name__})") from exc
        except BaseException:
            slot.__exit__(None, None, None)
            raise
        buffer = io.StringIO()
        # every text quoted, so that a reader splitting on another separator (";" in many locales) does not cut a
        # cell where a formula could start; numbers written as numbers
        writer = csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC)

        def rows() -> Iterator[str]:
            sent = 0
            try:
                writer.writerow(CSV_COLUMNS)
                try:
                    for partition in result.partitions():
                        for row in partition:
                            writer.writerow([_csv_value(v) for v in row])
                        sent += len(partition)
                        yield buffer.getvalue()
                        buffer.seek(0)
                        buffer.truncate()
                except DB_ERRORS as exc:
                    # the answer's status and first rows are gone already: the connection is cut after a last line
                    # that says the file is short, so that neither a client that reads lines without checking the
                    # transfer's end nor a person opening the file takes it for every decision asked for
                    log.error("decisions export cut short after %d rows: %s", sent, type(exc).__name__)
                    yield (buffer.getvalue() + f'"{EXPORT_INCOMPLETE}: the database failed after {sent} rows '
                           f'({type(exc).__name__}); these rows are not every decision asked for"\r\n')
                    raise
                if buffer.tell():
                    yield buffer.getvalue()
            finally:
                result.close()
                conn.close()
                slot.__exit__(None, None, None)

        return rows()

    def decision(self, decision_id: str, allowed: tuple[str, ...] | None) -> dict[str, Any]:
        if not domain.DECISION_ID.matches(decision_id):
            raise NotFound(f"unknown decision {decision_id!r}")
        with self.uow.history() as session:
            row = decision_by_id(session, decision_id)
            if row is None or (allowed is not None and row.portfolio_id not in allowed):
                raise NotFound(f"unknown decision {decision_id!r}")
            version = session.execute(select(m.ConfigVersion).where(
                m.ConfigVersion.portfolio_id == row.portfolio_id, m.ConfigVersion.version == row.config_version)
            ).scalar_one()
            fills = session.scalars(select(m.Fill).where(m.Fill.decision_id == row.id)).all()
            events = session.scalars(select(m.SwitchEventRow).where(m.SwitchEventRow.decision_id == row.id)
                                     .order_by(m.SwitchEventRow.audit_seq)).all()
            return {
                **decision_payload(row),
                "context": row.context,
                "state_before": audit.document(row.state_before),
                "booking": row.booking,
                "submitted_by": {"key_id": row.key_id, "key_name": row.key_name, "key_role": row.key_role},
                "config": {"version": version.version, "config_hash": version.config_hash, "body": version.body},
                "fills": [{"filled_units": float(f.filled_units), "fill_price": float(f.fill_price),
                           "realised_delta": float(f.realised_delta), "at": f.at.isoformat()} for f in fills],
                "switch_events": [_event(e) for e in events],
                "latency_ms": float(row.latency_ms) if row.latency_ms is not None else None,
                "audit": {"seq": row.audit_seq, "prev_hash": row.prev_hash, "row_hash": row.row_hash},
            }

    def events(self, chain: str, start: datetime | None, end: datetime | None, kind: str | None,
               actor: str | None, limit: int, after_seq: int | None, newest_first: bool = False) -> dict[str, Any]:
        """Kill-switch events and admin actions of one chain (a portfolio, or `_system`), in chain order
        (``newest_first``: reversed, ``after_seq`` then meaning before it). 404 for a portfolio that does not
        exist (as every route naming one)."""
        if chain != audit.SYSTEM_CHAIN:
            self.uow.known(chain)
        with self.uow.history() as session:
            out: list[dict[str, Any]] = []
            for model, label in ((m.SwitchEventRow, "switch_event"), (m.AdminAction, "admin_action")):
                if kind is not None and kind != label:
                    continue
                if actor is not None and model is m.SwitchEventRow:
                    continue
                conds = [audit.on_chain(model, chain)]
                if start is not None:
                    conds.append(model.at >= start)
                if end is not None:
                    conds.append(model.at < end)
                if after_seq is not None:
                    conds.append(model.audit_seq < after_seq if newest_first else model.audit_seq > after_seq)
                if actor is not None:
                    conds.append(model.actor == actor)
                order = model.audit_seq.desc() if newest_first else model.audit_seq
                rows = session.scalars(select(model).where(*conds).order_by(order).limit(limit + 1))
                out += [_event(r) if model is m.SwitchEventRow else _action(r) for r in rows]
            out.sort(key=lambda e: e["audit_seq"], reverse=newest_first)
            page = out[:limit]
            return {"chain": chain, "events": page, "count": len(page),
                    "next_after_seq": page[-1]["audit_seq"] if len(out) > limit else None}

    def proof(self, decision_id: str, allowed: tuple[str, ...] | None) -> dict[str, Any]:
        """A decision's inclusion proof against the latest signed checkpoint of its chain (one is made now if
        none covers it yet)."""
        from . import anchor as anchoring

        if not domain.DECISION_ID.matches(decision_id):
            raise NotFound(f"unknown decision {decision_id!r}")
        for attempt in (1, 2):
            with self.uow.reading() as session:
                row = decision_by_id(session, decision_id)
                if row is None or (allowed is not None and row.portfolio_id not in allowed):
                    raise NotFound(f"unknown decision {decision_id!r}")
                if row.audit_seq is None:
                    raise NotFound(f"decision {decision_id!r} has no place on a chain")
                latest = session.scalars(select(m.AuditCheckpoint).where(
                    m.AuditCheckpoint.chain == row.portfolio_id).order_by(m.AuditCheckpoint.size.desc()).limit(1)
                ).first()
                if latest is not None and latest.size >= row.audit_seq:
                    return anchoring.decision_proof(session, row, latest)
                chain = row.portfolio_id
                head = session.execute(text("SELECT audit_seq FROM portfolios WHERE id = :p"), {"p": chain}).scalar()
            if attempt == 1:
                try:
                    self.anchor.checkpoint({chain: head}, wait=True, strict=True)
                except anchoring.BrokenChain as exc:
                    raise Conflict(str(exc)) from None
        raise Unavailable("no checkpoint covers this decision yet: try again")

    def consistency(self, chain: str, old: int | None = None, new: int | None = None) -> dict[str, Any]:
        """A consistency proof between two signed checkpoints of a chain (default: its first and its last in
        the sink), checked against both roots: the trail between them only grew."""
        from . import anchor as anchoring
        from .store import merkle

        with self.uow.reading() as session:
            trail = anchoring.trail_id(session)
        statements, _bad = anchoring.signed_statements(self.anchor.sink, self.anchor.trusted, trail)
        found = {s["size"]: s for s in statements.get(chain, [])}
        if not found:
            raise NotFound(f"no signed checkpoint of chain {chain!r} in {self.anchor.sink.directory}")
        old = min(found) if old is None else old
        new = max(found) if new is None else new
        for size in (old, new):
            if size not in found:
                raise NotFound(f"no signed checkpoint of chain {chain!r} at size {size}")
        if old > new:
            raise Invalid("the older checkpoint must be the smaller", {"from": [f"{old} > {new}"]})
        with self.uow.reading() as session:
            try:
                proof = anchoring.consistency(session, chain, old, new)
            except LookupError as exc:  # the tree lacks nodes: it was never extended that far here
                raise Conflict(f"cannot prove: {exc}") from None
        holds = merkle.verify_consistency(old, new, bytes.fromhex(found[old]["root"]), bytes.fromhex(found[new]["root"]),
                                          [bytes.fromhex(h) for h in proof])
        return {"chain": chain, "old": found[old], "new": found[new], "consistency_proof": proof, "consistent": holds}

    def verify(self, portfolios: tuple[str, ...] | None = None, sink: Any = None,
               public_key: Any = None, actor: Any = None,
               progress: Progress | None = None) -> dict[str, Any]:
        """The whole trail: every chain walked; the rows named by hash and the state derived from the chains
        checked (app/store/reconcile.py); the chains against every signed checkpoint of the sink
        (``sink``/``public_key``: the service's unless given). ``portfolios``: only theirs (a key limited to
        them; key administration and mark snapshots are not theirs). ``progress(what, done, total)``: how far
        the walk is (app/store/audit.py verify_all)."""
        from . import anchor as anchoring
        from .store import reconcile

        sink = sink or (self.anchor.sink if self.anchor else None)
        public_key = public_key or (self.anchor.trusted if self.anchor else None)
        statements: dict[str, list[dict[str, Any]]] = {}
        findings: list[dict[str, Any]] = []
        if sink is not None and public_key is not None:
            with self.uow.reading() as session:
                trail = anchoring.trail_id(session)
            statements, findings = anchoring.signed_statements(sink, public_key, trail)
            if trail is None:
                findings.append({"chain": "*", "table": "audit_trail", "row": {}, "problem": "missing",
                                 "detail": "the database holds no trail id (audit_trail is empty): it was deleted"})
        if portfolios is not None:
            statements = {c: s for c, s in statements.items() if c in portfolios}
            findings = [f for f in findings if f["chain"] in portfolios]
        roots: dict[str, anchoring.Roots] = {}

        def seen(chain: str) -> Any:
            if chain not in statements:
                return None
            roots[chain] = anchoring.Roots([s["size"] for s in statements[chain]])
            return roots[chain].add

        with self.uow.reading() as session:
            # one snapshot for everything read: heads, rows and the state derived from them (read at different
            # moments under decisions being made, a chain looked longer than its head said: "edited")
            session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
            reports = audit.verify_all(session, portfolios, seen, progress)
            for chain, chain_statements in sorted(statements.items()):
                findings += anchoring.compared(chain, chain_statements, roots.get(chain))
            for report in reports:
                if report.chain != audit.SYSTEM_CHAIN:
                    findings += [f.to_dict() for f in reconcile.portfolio_findings(session, report.chain)]
                else:
                    findings += [f.to_dict() for f in reconcile.firm_findings(session)]
            if portfolios is None:
                findings += [f.to_dict() for f in reconcile.snapshot_findings(session)]
        chains = [r.to_dict() for r in reports]
        out: dict[str, Any] = {"ok": all(r.ok for r in reports) and not findings, "chains": chains,
                               "count": sum(r.count for r in reports),
                               "checkpoints": sum(len(s) for s in statements.values())}
        broken = {r["chain"]: {"first_broken_seq": r["first_broken_seq"], "problem": r["problem"],
                               "detail": r["details"].get("detail")} for r in chains if not r["ok"]}
        if broken:
            out["broken"] = broken
        if findings:
            out["findings"] = findings
        if not out["ok"] and actor is not None:
            self._announce_failure(out, actor)
        return out

    def _announce_failure(self, report: dict[str, Any], actor: Any) -> None:
        """A verification that failed is a risk event (`audit_failed`): an admin action of the `_system` chain says
        who verified and what is broken. The report is answered whatever becomes of this record."""
        findings = report.get("findings", [])
        broken = report.get("broken", {})
        summary = {"broken": {c: b["problem"] for c, b in sorted(broken.items())[:50]},
                   "findings": [{k: f.get(k) for k in ("chain", "table", "problem")} for f in findings[:50]],
                   "findings_count": len(findings)}
        try:
            with self.uow.firm() as tx, tx.writing():
                tx.add(tx.system_rows([admin_row(
                    actor, portfolio_id=None, action="audit_verify_failed", at=self.uow.clock(), after=summary,
                    reason=f"{len(broken)} chain(s) broken, {len(findings)} finding(s)")]))
                tx.commit()
        except Exception:  # (the database refusing it too is for the operator's log)
            log.error("audit: the failed verification could not be recorded as an event", exc_info=True)


# text a spreadsheet would run as a formula (OWASP, CSV injection): a formula character at the start of a cell,
# or after a ";" or "," inside one (a reader in another locale may split there), is preceded by a quote
_FORMULA_START = re.compile(r"(^|[;,])(?=[=+\-@\t\r])")


def _csv_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, str):
        return _FORMULA_START.sub(r"\1'", value)
    return value


def _event(e: m.SwitchEventRow) -> dict[str, Any]:
    return {"kind": "switch_event", "audit_seq": e.audit_seq, "portfolio_id": e.portfolio_id, "switch": e.switch,
            "action": e.action, "symbol": e.symbol, "at": e.at.isoformat(),
            "value": float(e.value) if e.value is not None else None,
            "threshold": float(e.threshold) if e.threshold is not None else None,
            "cooldown_until": e.cooldown_until.isoformat() if e.cooldown_until else None, "reason": e.reason,
            "detail": e.detail, "decision_id": e.decision_id, "row_hash": e.row_hash}


def _action(a: m.AdminAction) -> dict[str, Any]:
    return {"kind": "admin_action", "audit_seq": a.audit_seq, "portfolio_id": a.portfolio_id, "action": a.action,
            "actor": a.actor, "actor_role": a.actor_role, "actor_key_id": a.actor_key_id, "at": a.at.isoformat(),
            "reason": a.reason, "before": a.before, "after": a.after, "row_hash": a.row_hash}


# -- shadow mode: replay of the audit trail under another configuration ---------------------

def _notional(state, symbol: str, units: Decimal, price: Decimal, config) -> float:
    from .risk.instruments import instrument, notional_per_unit

    per_unit = notional_per_unit(instrument(symbol, config), price, state.marks, config.account_currency)
    return float(units * (per_unit if per_unit is not None else price))


class _Tally:
    def __init__(self) -> None:
        self.total = 0
        self.approved = 0
        self.exposure = 0.0
        self.by_reason: dict[str, int] = {}

    def add(self, approved: bool, reason: str | None, exposure: float) -> None:
        self.total += 1
        if approved:
            self.approved += 1
            self.exposure += exposure
        else:
            self.by_reason[reason] = self.by_reason.get(reason, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"decisions": self.total, "approved": self.approved, "rejected": self.total - self.approved,
                "approval_rate": self.approved / self.total if self.total else 0.0,
                "total_approved_exposure": round(self.exposure, 2),
                "rejections_by_reason": dict(sorted(self.by_reason.items()))}


def replay(uow: UnitOfWork, portfolio_id: str, start: datetime | None, end: datetime | None,
           candidate: Any | None, progress: Progress | None = None) -> Iterator[dict[str, Any]]:
    """Re-decide every stored decision in a range, each against the state it saw, under ``candidate``
    (None: the configuration each was made with). Yields each decision that would differ, then a summary.
    ``progress(what, done, total)``: the decisions re-decided of those in the range, every REPLAY_PROGRESS_EVERY.
    """
    from .risk import TradeIntent
    from .risk import engine as risk_engine
    from .store import repository

    before, after = _Tally(), _Tally()
    differing = 0
    d = m.Decision
    query = select(d).where(d.portfolio_id == portfolio_id)
    if start is not None:
        query = query.where(d.decided_at >= start)
    if end is not None:
        query = query.where(d.decided_at < end)
    query = query.order_by(d.seq).execution_options(yield_per=500)
    try:
        with uow.history_slot(), uow.history_errors(), uow.history_db.reader() as session:
            session.execute(text(NO_IDLE_LIMIT))  # streamed (format=ndjson): idle while its client reads
            uow.note_history_read(session)
            total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) if progress else 0
            for row in session.scalars(query):
                if progress is not None and before.total % REPLAY_PROGRESS_EVERY == 0:
                    progress(f"replaying {portfolio_id}", before.total, total)
                original = repository.config_for(session, row.portfolio_id, row.config_version)
                config = candidate or original
                state = repository.resolve_state(session, row.state_before)
                intent = TradeIntent.from_dict(row.intent)
                outcome = risk_engine.decide(state, intent, config, row.decided_at, row.id).decision
                exposure_was = _notional(state, row.symbol, row.approved_units, row.price, original)
                exposure_now = _notional(state, row.symbol, outcome.units, row.price, config)
                before.add(row.status == "APPROVED", row.reason_code, exposure_was)
                after.add(outcome.approved, outcome.reason, exposure_now)
                units_was, units_now = float(row.approved_units), float(outcome.units)
                if (row.status, units_was, row.reason_code) != (outcome.status.value, units_now, outcome.reason):
                    differing += 1
                    yield {"type": "difference", "id": row.id, "seq": row.seq, "decided_at": row.decided_at.isoformat(),
                           "symbol": row.symbol, "direction": row.direction, "intent_id": row.intent_id,
                           "original": {"status": row.status, "units": units_was, "reason": row.reason_code},
                           "counterfactual": {"status": outcome.status.value, "units": units_now,
                                              "reason": outcome.reason, "message": outcome.message}}
            if progress is not None:
                progress(f"replaying {portfolio_id}", before.total, total)
    except DatabaseUnavailable as exc:
        raise Unavailable(str(exc)) from exc
    yield {"type": "summary", "portfolio_id": portfolio_id, "differing": differing,
           "config_hash": candidate.config_hash if candidate else "as recorded",
           "before": before.to_dict(), "after": after.to_dict()}
