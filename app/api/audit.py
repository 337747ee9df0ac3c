"""Compliance: the decision history (filtered, keyset-paginated, CSV), audit events, verification."""

from __future__ import annotations

from flask import Response, current_app, stream_with_context
from flask.views import MethodView
from marshmallow import RAISE, Schema, fields, validate

from app.compliance import Compliance, DecisionFilter
from app.risk import domain
from app.risk.model import ReasonCode

from .auth import roles
from .common import ERROR_RESPONSES, Blueprint, actor, ok, portfolio_query
from .schemas import (
    AuditEventsSchema,
    DecisionPageSchema,
    DecisionRecordSchema,
    Moment,
    ProofSchema,
    ReplayResultSchema,
    VerifySchema,
    Whole,
    identifier,
    portfolio_field,
)
from .scope import CHAIN, ONE, ONE_OR_ALL, VISIBLE, acts_on, current

blp = Blueprint("compliance", __name__, description="Decision history and the audit trail (compliance)")

PORTFOLIO_OR_ALL = Whole(domain.Identifier(rf"\*|{domain.PORTFOLIO_ID.pattern}",
                                           "a portfolio id, or * for every portfolio"))
CHAIN_ID = Whole(domain.Identifier(domain.PORTFOLIO_ID.pattern, "a portfolio id, or _system for key administration"))


class DecisionQuerySchema(Schema):
    portfolio_id = fields.String(validate=PORTFOLIO_OR_ALL, metadata={"description": "absent: `default`"})
    start = Moment(data_key="from", metadata={"description": "decided at or after (ISO 8601)"})
    end = Moment(data_key="to", metadata={"description": "decided before (ISO 8601)"})
    symbol = identifier(domain.SYMBOL)
    status = fields.String(validate=validate.OneOf(["APPROVED", "REJECTED"]))
    reason = fields.String(validate=validate.OneOf([r.value for r in ReasonCode]))
    config_hash = fields.String(validate=validate.Length(64, 64))
    intent_id = identifier(domain.INTENT_ID)
    key_id = fields.String(validate=validate.Length(1, 36))
    key_name = identifier(domain.KEY_NAME)
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))
    cursor = fields.String(validate=validate.Length(1, 400), metadata={"description": "next_cursor of the last page"})
    format = fields.String(load_default="json", validate=validate.OneOf(["json", "csv"]))
    order = fields.String(load_default="asc", validate=validate.OneOf(["asc", "desc"]),
                          metadata={"description": "desc: newest first (the JSON pages; CSV is always oldest first)"})


class EventQuerySchema(Schema):
    portfolio_id = fields.String(validate=CHAIN_ID, metadata={"description": "absent: `default`"})
    start = Moment(data_key="from")
    end = Moment(data_key="to")
    kind = fields.String(validate=validate.OneOf(["switch_event", "admin_action"]))
    actor = identifier(domain.KEY_NAME)
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))
    after_seq = fields.Integer(validate=validate.Range(0, 2**62), metadata={
        "description": "next_after_seq of the last page (with order=desc: the events before it)"})
    order = fields.String(load_default="asc", validate=validate.OneOf(["asc", "desc"]),
                          metadata={"description": "desc: newest first"})


def compliance() -> Compliance:
    return current_app.extensions["rpm_compliance"]


@blp.route("/decisions")
class Decisions(MethodView):
    @roles("compliance", "admin")
    @acts_on(ONE_OR_ALL)
    @blp.arguments(DecisionQuerySchema(), location="query", unknown=RAISE)
    @blp.doc(responses={"200": {
        "description": "a page of decisions (or, with format=csv, all of them as CSV)",
        "content": {"application/json": {"schema": DecisionPageSchema},
                    "text/csv": {"schema": {"type": "string"}}}}})
    @blp.alt_response(422, description=ERROR_RESPONSES[422])
    @blp.alt_response(503, description=ERROR_RESPONSES[503])
    def get(self, query):
        """Every decision, filtered; keyset pagination (`cursor`); `format=csv` streams the whole range"""
        flt = DecisionFilter(
            portfolios=current().portfolios, start=query.get("start"), end=query.get("end"),
            symbol=query.get("symbol"), status=query.get("status"), reason=query.get("reason"),
            config_hash=query.get("config_hash"), intent_id=query.get("intent_id"), key_id=query.get("key_id"),
            key_name=query.get("key_name"))
        if query["format"] == "csv":
            body = compliance().decisions_csv(flt)
            return Response(stream_with_context(body), mimetype="text/csv",
                            headers={"Content-Disposition": "attachment; filename=decisions.csv"})
        return ok(compliance().decisions(flt, query["limit"], query.get("cursor"), newest_first=query["order"] == "desc"))


@blp.route("/decisions/<string:decision_id>")
class DecisionView(MethodView):
    @roles("compliance", "admin")
    @acts_on(VISIBLE)
    @blp.response(200, DecisionRecordSchema)
    @blp.alt_response(404, description=ERROR_RESPONSES[404])
    @blp.alt_response(503, description=ERROR_RESPONSES[503])
    def get(self, decision_id):
        """One decision: full breakdown, the state it saw, its configuration, fills, who submitted it"""
        return ok(compliance().decision(decision_id, current().visible))


@blp.route("/decisions/<string:decision_id>/proof")
class DecisionProof(MethodView):
    @roles("compliance")
    @acts_on(VISIBLE)
    @blp.response(200, ProofSchema, description="the decision as hashed, its inclusion proof (RFC 6962) and the "
                  "signed checkpoint it proves against: `rpm audit check-proof FILE --public-key K` checks it offline")
    @blp.alt_response(404, description=ERROR_RESPONSES[404])
    @blp.alt_response(503, description=ERROR_RESPONSES[503])
    def get(self, decision_id):
        """A decision's proof that it is in the audit trail as it was, against a signed checkpoint"""
        return ok(compliance().proof(decision_id, current().visible))


@blp.route("/audit/events")
class AuditEvents(MethodView):
    @roles("compliance", "admin")
    @acts_on(CHAIN)
    @blp.arguments(EventQuerySchema(), location="query", unknown=RAISE)
    @blp.response(200, AuditEventsSchema)
    @blp.alt_response(422, description=ERROR_RESPONSES[422])
    @blp.alt_response(503, description=ERROR_RESPONSES[503])
    def get(self, query):
        """Kill-switch events and admin actions (who, when, what, why) of a portfolio, in chain order"""
        return ok(compliance().events(current().portfolio, query.get("start"), query.get("end"),
                                      query.get("kind"), query.get("actor"), query["limit"], query.get("after_seq"),
                                      newest_first=query["order"] == "desc"))


@blp.route("/audit/verify")
class AuditVerify(MethodView):
    @roles("compliance")
    @acts_on(VISIBLE)
    @blp.response(200, VerifySchema, description='{"ok": true|false, "chains": [...], "broken": {...}}')
    @blp.alt_response(503, description=ERROR_RESPONSES[503])
    def get(self):
        """Verify every audit chain: complete (gap-free), untampered (hashes), in order (links)"""
        return ok(compliance().verify(portfolios=current().visible, actor=actor()))





class ReplaySchema(Schema):
    portfolio_id = portfolio_field()
    start = Moment(data_key="from")
    end = Moment(data_key="to")
    preset = fields.String(validate=validate.OneOf(["conservative", "balanced", "aggressive"]))
    config = fields.Dict(metadata={"description": "a candidate configuration (absent parameters: the defaults)"})
    format = fields.String(load_default="json", validate=validate.OneOf(["json", "ndjson"]),
                           metadata={"description": "ndjson streams one line per difference, then the summary"})


def candidate_config(body: dict):
    from app.errors import Invalid
    from app.presets import load_preset
    from app.risk import ConfigError, RPMConfig

    if "preset" in body and "config" in body:
        raise Invalid("give a preset or a config, not both", {"config": ["give a preset or a config, not both"]})
    try:
        if "config" in body:
            return RPMConfig.from_dict(body["config"])
        if "preset" in body:
            return load_preset(body["preset"])
    except ConfigError as exc:
        raise Invalid("invalid configuration", {"config": {exc.field: [exc.message]}}) from None
    return None


@blp.route("/replay")
class Replay(MethodView):
    @roles("compliance")
    @acts_on(ONE)
    @portfolio_query(blp)
    @blp.arguments(ReplaySchema(), required=False)
    @blp.doc(responses={"200": {
        "description": "every decision that would differ, and a before/after summary",
        "content": {"application/json": {"schema": ReplayResultSchema},
                    "application/x-ndjson": {"schema": {"type": "string"}}}}})
    @blp.alt_response(422, description=ERROR_RESPONSES[422])
    @blp.alt_response(503, description=ERROR_RESPONSES[503])
    def post(self, body, **_query):
        """Re-decide a stored range under a candidate configuration, each decision against the state it saw"""
        import json

        from app.compliance import replay

        candidate = candidate_config(body)
        lines = replay(current_app.extensions["rpm"].uow, current().portfolio, body.get("start"), body.get("end"),
                       candidate)
        if body["format"] == "ndjson":
            first = next(lines)  # fail before streaming if the database is down
            def stream():
                yield json.dumps(first) + "\n"
                for line in lines:
                    yield json.dumps(line) + "\n"
            return Response(stream_with_context(stream()), mimetype="application/x-ndjson")
        items = list(lines)
        return ok({"differences": [i for i in items if i["type"] == "difference"], "summary": items[-1]})
