"""Archiving a month of decisions (`rpm audit archive --before MONTH`), and checking an archive file.

A month is archived only when it has passed (by the service's clock), after its chains verify and a signed
checkpoint covers every one of its decisions (one is made now if needed). It is exported, gzip-compressed, as
JSON lines: a header (the month, each chain's count and range, the trail, the public key), then one line per
decision, its proof (what `GET /decisions/{id}/proof` gives: the row as its hash covers it, its inclusion proof,
the signed checkpoint) — each line checks alone with the public key (`rpm audit verify-archive`). Then, in one
transaction: the partition is detached, what it holds is checked to be what was exported (else all is done again),
and the archive is recorded, with an admin action on the `_system` chain naming the file, its SHA-256 and what it
took of each chain (what `verify` accounts the chains' missing positions with: a hashed record, not a table).
Intent ids stay in `decision_intents`: a retry of an archived decision's intent is refused (409), never decided
again. The detached table stays in the database until ``drop`` is asked for.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from . import anchor as anchoring
from .errors import Conflict, Invalid, NotFound, Unavailable
from .services.unit_of_work import admin_row
from .store import audit, merkle, partitions
from .store import models as m
from .store.audit import Progress

FORMAT = "rpm-archive/1"
DETACH_ATTEMPTS = 30
_BATCH = 1000
_text = partitions.month_text


# what a month's table holds of each chain: how many rows, the first and last position
_PER_CHAIN = ("SELECT portfolio_id, count(*), min(audit_seq), max(audit_seq) FROM %s "
              "GROUP BY portfolio_id ORDER BY portfolio_id")


def _per_chain(rows: Any) -> dict[str, dict[str, int]]:
    return {chain: {"rows": n, "first_seq": first, "last_seq": last} for chain, n, first, last in rows}


class Arrived(Exception):
    """Decisions of the month being archived arrived after its export."""


@dataclass
class Archived:
    month: date
    file: str
    rows: int
    sha256: str
    dropped: bool

    def to_dict(self) -> dict[str, Any]:
        return {"month": _text(self.month), "file": self.file, "rows": self.rows, "sha256": self.sha256,
                "dropped": self.dropped}


class Archiver:
    def __init__(self, uow: Any, compliance: Any, anchor: Any):
        self.uow, self.compliance, self.anchor = uow, compliance, anchor

    def archive(self, before: date, directory: str | Path, actor: Any, *, drop: bool = False,
                progress: Progress | None = None) -> list[Archived]:
        """Archive every month before ``before`` that has a partition and is not archived yet (and, with ``drop``,
        drop every archived month's detached table); what was done, oldest first. ``progress(what, done, total)``:
        each month's verification, then its export, decision by decision."""
        current = partitions.month_of(self.uow.clock())
        if before > current:
            raise Invalid(f"{_text(before)} has not passed: months before {_text(current)} can be archived")
        directory = Path(directory).absolute()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / ".rpm-archive-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise Invalid(f"archives cannot be written to {directory}: {exc.strerror or exc}") from None
        with self.uow.reading() as session:
            held = [month for month in partitions.months(session.connection()) if month < before]
            done = {a.month: (Archived(a.month, a.file, a.rows, a.sha256, a.dropped_at is not None))
                    for a in session.scalars(select(m.AuditArchive))}
        made = [self._archive_again(month, directory, actor, progress) for month in held if month not in done]
        if drop:
            made += [a for a in done.values() if a.month < before and not a.dropped]
            for archived in made:
                if not archived.dropped:
                    _still_there(archived)  # (the only copy left: never dropped without it)
                    self._drop(archived.month, actor)
                    archived.dropped = True
        return sorted(made, key=lambda a: a.month)

    # -- one month ------------------------------------------------------------------------------------------

    def _chains(self, month: date) -> dict[str, dict[str, int]]:
        with self.uow.reading() as session:
            return _per_chain(session.execute(text(_PER_CHAIN % partitions.name_of(month))))

    def _archive_again(self, month: date, directory: Path, actor: Any, progress: Progress | None) -> Archived:
        """Archive ``month``, again from the start if decisions of it arrived between its export and its detachment
        (a host whose clock is behind, a transaction stamped before midnight committing after it)."""
        for attempt in range(1, 4):
            try:
                return self._archive(month, directory, actor, progress)
            except Arrived:
                if attempt == 3:
                    raise Conflict(f"decisions of {_text(month)} kept arriving while it was archived: nothing "
                                   "detached; run the command again") from None
        raise AssertionError("unreachable")

    def _archive(self, month: date, directory: Path, actor: Any, progress: Progress | None) -> Archived:
        chains = self._chains(month)
        if chains:
            verifying = None if progress is None else (lambda what, done, total: progress(
                f"{what} {_text(month)}", done, total))
            report = self.compliance.verify(portfolios=tuple(chains), progress=verifying)
            if not report["ok"]:
                raise Conflict(f"the chains of {_text(month)} do not verify: nothing archived "
                               f"({json.dumps(report.get('broken') or report.get('findings'))[:400]})")
            self.anchor.checkpoint({c: self._head(c) for c in chains}, wait=True, strict=True)
        path = directory / f"{partitions.name_of(month)}.jsonl.gz"
        rows, digest = self._export(month, chains, path, progress)
        for attempt in range(1, DETACH_ATTEMPTS + 1):
            try:
                self._detach(month, chains, path, rows, digest, actor)
                break
            except Unavailable as exc:
                if attempt == DETACH_ATTEMPTS:
                    raise Unavailable(f"{_text(month)} is exported to {path} but could not be detached in {attempt} "
                                      f"tries (a long transaction holding the decisions table, or the database away: "
                                      f"{exc.message}); run the command again") from None
                time.sleep(1)
        return Archived(month, str(path), rows, digest, False)

    def _detach(self, month: date, chains: dict[str, dict[str, int]], path: Path, rows: int, digest: str,
                actor: Any) -> None:
        """Detach the month and record its archive, in one transaction. DETACH takes an ACCESS EXCLUSIVE lock of the
        decisions table, which decisions being made wait for: it is waited for a second at most (and tried again),
        so that trading waits no longer than that behind it."""
        with self.uow.firm() as tx, tx.writing():
            conn = tx.conn
            conn.execute("SET LOCAL lock_timeout = '1s'")
            conn.execute(f"ALTER TABLE {partitions.TABLE} DETACH PARTITION {partitions.name_of(month)}")
            # what left is what was exported, or nothing leaves (the transaction is rolled back)
            if _per_chain(conn.execute(_PER_CHAIN % partitions.name_of(month))) != chains:
                raise Arrived(month)
            conn.execute(
                "INSERT INTO audit_archives (month, partition, rows, file, sha256, archived_at, archived_by) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (month, partitions.name_of(month), rows, str(path), digest, self.uow.clock(), actor.name))
            # a chain whose last row leaves: the chain-head guard finds its hash here
            conn.execute("INSERT INTO audit_archived_heads (chain, audit_seq, row_hash) SELECT d.portfolio_id, "
                         f"d.audit_seq, d.row_hash FROM {partitions.name_of(month)} d JOIN portfolios p "
                         "ON p.id = d.portfolio_id AND p.audit_seq = d.audit_seq ON CONFLICT DO NOTHING")
            tx.add(tx.system_rows([admin_row(
                actor, portfolio_id=None, action="audit_archived", at=self.uow.clock(),
                after={"month": f"{_text(month)}", "rows": rows, "file": path.name, "sha256": digest,
                       "chains": chains}, reason=f"decisions of {_text(month)} archived")]))
            tx.commit()

    def _head(self, chain: str) -> int:
        with self.uow.reading() as session:
            return session.execute(text("SELECT audit_seq FROM portfolios WHERE id = :p"), {"p": chain}).scalar()

    def _export(self, month: date, chains: dict[str, dict[str, int]], path: Path,
                progress: Progress | None = None) -> tuple[int, str]:
        """Write the month's file (to a temporary name, synced, then renamed): its rows and SHA-256."""
        partial = path.with_suffix(".partial")
        rows = 0
        with self.uow.reading() as session:
            header = {"format": FORMAT, "month": f"{_text(month)}", "partition": partitions.name_of(month),
                      "rows": sum(c["rows"] for c in chains.values()), "chains": chains,
                      "trail": anchoring.trail_id(session),
                      "public_key": anchoring.public_pem(self.anchor.signer.public)}
            with open(partial, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
                out.write(json.dumps(header, sort_keys=True).encode() + b"\n")
                for proof in self._proofs(session, month, chains):
                    out.write(json.dumps(proof, sort_keys=True).encode() + b"\n")
                    rows += 1
                    if progress is not None and (rows % _BATCH == 0 or rows == header["rows"]):
                        progress(f"exporting {_text(month)}", rows, header["rows"])
                out.flush()
                raw.flush()
                os.fsync(raw.fileno())
        if rows != header["rows"]:
            partial.unlink()
            raise Conflict(f"{_text(month)}: {rows} decisions exported, {header['rows']} counted: nothing archived")
        os.replace(partial, path)
        return rows, _sha256(path)

    def _proofs(self, session: Any, month: date, chains: dict[str, dict[str, int]]) -> Iterator[dict[str, Any]]:
        for chain in chains:
            checkpoint = session.scalars(select(m.AuditCheckpoint).where(m.AuditCheckpoint.chain == chain)
                                         .order_by(m.AuditCheckpoint.size.desc()).limit(1)).first()
            if checkpoint is None or checkpoint.size < chains[chain]["last_seq"]:
                raise Conflict(f"no signed checkpoint covers the decisions of {chain} in {_text(month)}")
            query = (select(m.Decision).where(m.Decision.portfolio_id == chain,
                                              m.Decision.decided_at >= partitions.start_of(month),
                                              m.Decision.decided_at < partitions.start_of(partitions.next_month(month)))
                     .order_by(m.Decision.audit_seq).execution_options(yield_per=_BATCH))
            for batch in session.scalars(query).partitions():
                wanted: set[merkle.Node] = set()
                for decision in batch:
                    wanted |= merkle.nodes_needed(merkle.inclusion_proof, decision.audit_seq - 1, checkpoint.size)
                found = anchoring.nodes(session, chain, wanted)
                for decision in batch:
                    yield anchoring.decision_proof(session, decision, checkpoint, found)
                session.expunge_all()

    def _drop(self, month: date, actor: Any) -> None:
        name = partitions.name_of(month)
        with self.uow.firm() as tx, tx.writing():
            conn = tx.conn
            conn.execute("SET LOCAL lock_timeout = '1s'")
            attached = conn.execute("SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(%s)", (name,)).fetchone()
            if attached:  # (never: a month is detached when archived)
                raise Conflict(f"{name} is still a partition of the decisions")
            conn.execute(f"DROP TABLE IF EXISTS {name}")
            conn.execute("UPDATE audit_archives SET dropped_at = %s WHERE month = %s", (self.uow.clock(), month))
            tx.add(tx.system_rows([admin_row(
                actor, portfolio_id=None, action="audit_archive_dropped", at=self.uow.clock(),
                after={"month": f"{_text(month)}", "partition": name}, reason=f"archived decisions of {_text(month)} "
                "dropped from the database")]))
            tx.commit()


def _still_there(archived: Archived) -> None:
    """The file an archive recorded is where it was written and unchanged, or Conflict."""
    path = Path(archived.file)
    if not path.is_file():
        raise Conflict(f"the archive of {_text(archived.month)} is not at {path}: its table is not dropped (put the "
                       "file back, or check it with `rpm audit verify-archive`)")
    if _sha256(path) != archived.sha256:
        raise Conflict(f"{path} is not the file archived for {_text(archived.month)} (its SHA-256 differs): its "
                       "table is not dropped")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: str | Path, public_key: Any) -> dict[str, Any]:
    """Check an archive file with nothing but itself and the public key(s) its checkpoints must be signed with
    (not the key its header names: whoever rewrote the file could have signed with a key of their own): every
    line's proof, the counts and ranges of its header. What holds, or ProofError / NotFound / Invalid."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"no archive at {path}")
    with gzip.open(path, "rt") as lines:
        try:
            header = json.loads(next(lines))
        except StopIteration:
            raise Invalid(f"{path} is not an RPM archive: it is empty") from None
        except (ValueError, OSError, EOFError, RecursionError) as exc:
            raise Invalid(f"{path} is not an RPM archive: {type(exc).__name__}: {exc}"[:300]) from None
        if not isinstance(header, dict) or header.get("format") != FORMAT or not _well_formed(header):
            raise Invalid(f"{path} is not an RPM archive of format {FORMAT}")
        seen: dict[str, dict[str, int]] = {}
        positions: set[tuple[str, int]] = set()
        try:
            for line in lines:
                held = anchoring.check_proof(json.loads(line), public_key)
                # what is read below is what the proof holds: the signed statement, the hashed row
                chain, seq = held["checkpoint"]["chain"], int(held["decision"]["audit_seq"])
                if (chain, seq) in positions:
                    raise anchoring.ProofError(f"the decision at {chain} #{seq} is in {path.name} twice")
                positions.add((chain, seq))
                if str(held["decision"].get("decided_at", ""))[:7] != header["month"]:
                    raise anchoring.ProofError(f"the decision at {chain} #{seq} was not made in {header['month']}")
                c = seen.setdefault(chain, {"rows": 0, "first_seq": seq, "last_seq": seq})
                c["rows"] += 1
                c["first_seq"], c["last_seq"] = min(c["first_seq"], seq), max(c["last_seq"], seq)
        except (OSError, EOFError, ValueError, KeyError, TypeError, RecursionError) as exc:
            if isinstance(exc, anchoring.ProofError):
                raise
            raise Invalid(f"{path} is damaged: {type(exc).__name__}: {exc}"[:300]) from None
    if seen != header["chains"] or header.get("rows") != len(positions):
        raise anchoring.ProofError(f"the decisions in {path.name} are not those its header counts")
    return {"file": str(path), "month": header["month"], "rows": sum(c["rows"] for c in seen.values()),
            "chains": seen, "sha256": _sha256(path), "ok": True}


def _well_formed(header: dict[str, Any]) -> bool:
    chains = header.get("chains")
    return (isinstance(header.get("month"), str) and isinstance(chains, dict) and all(
        isinstance(c, dict) and all(type(c.get(k)) is int for k in ("rows", "first_seq", "last_seq"))
        for c in chains.values()))


def recorded(session: Any, month: str) -> dict[str, Any] | None:
    """What the trail recorded of the archive of ``month`` (YYYY-MM): its admin action's ``after`` (file, SHA-256,
    rows, what it took of each chain), or None."""
    return next((after for after in audit.archive_records(session) if after.get("month") == month), None)


def matches_record(held: dict[str, Any], record: dict[str, Any] | None) -> str | None:
    """Why a checked file is not the archive the trail recorded (None: it is)."""
    if record is None:
        return f"the trail records no archive of {held['month']}"
    if record.get("sha256") != held["sha256"] or record.get("rows") != held["rows"] or record.get("chains") != held["chains"]:
        return (f"it is not the file archived for {held['month']} (recorded: {record.get('rows')} decisions, "
                f"sha256 {str(record.get('sha256'))[:16]}...)")
    return None
