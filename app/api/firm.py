"""The firm above portfolios: its view, its groups, their limits and members, halts at any level, firm marks."""

from __future__ import annotations

from flask import Response
from flask.views import MethodView
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from app.risk import domain
from app.services import firm, report

from .auth import ANY, roles
from .common import Blueprint, actor, documented_errors, ok, uow
from .schemas import (
    EndOfDaySchema,
    FirmMarksResponseSchema,
    GroupStateSchema,
    GroupTreeSchema,
    HaltSchema,
    LevelSchema,
    MarksSchema,
    MembershipSchema,
    ResumeSchema,
    identifier,
)
from .scope import FIRM, acts_on

blp = Blueprint("firm", __name__, description="The firm and its groups: views, limits, halts, firm marks")

_errors = documented_errors(blp)
GROUP_ID = domain.PORTFOLIO_ID  # (the same alphabet; `firm` names the firm)


class GroupCreateSchema(Schema):
    group_id = identifier(GROUP_ID, required=True, metadata={"example": "fx-desks"})
    limits = fields.Dict(load_default=dict, metadata={"description": "see PUT /groups/{id}/limits",
                                                      "example": {"gross_exposure": 500000}})
    reason = fields.String(validate=validate.Length(1, domain.REASON_LENGTH))


class LimitsSchema(Schema):
    limits = fields.Dict(required=True, metadata={
        "description": "each optional, in the firm's currency: gross_exposure, net_exposure, currency_exposure, "
                       "symbol_exposure, daily_loss (amounts > 0); positions (a count); drawdown (a fraction "
                       "in (0, 1]). {} removes them all",
        "example": {"gross_exposure": 500000, "daily_loss": 4000, "drawdown": 0.05}})
    reason = fields.String(validate=validate.Length(1, domain.REASON_LENGTH))


class MemberSchema(Schema):
    portfolio_id = identifier(domain.PORTFOLIO_ID, required=True)
    reason = fields.String(validate=validate.Length(1, domain.REASON_LENGTH))


class FirmMarksSchema(MarksSchema):
    @validates_schema
    def no_portfolio(self, data: dict, **_: object) -> None:
        if "portfolio_id" in data:
            raise ValidationError("firm marks are for every portfolio: post a portfolio's own to /marks",
                                  "portfolio_id")


def _level(group_id: str) -> str:
    from app.errors import Invalid

    if not GROUP_ID.matches(group_id):
        raise Invalid("invalid group id", {"group_id": [f"must be {GROUP_ID.description}"]})
    return group_id


@blp.route("/firm")
class Firm(MethodView):
    @roles(*ANY)
    @acts_on(FIRM)
    @blp.response(200, LevelSchema)
    @_errors
    def get(self):
        """The firm: every portfolio's aggregate (positions, exposures, equity, PnL, drawdown), its limits and how
        much of each is used, its switches, its groups and the portfolios directly under it"""
        return ok(firm.firm_view(uow()))


@blp.route("/firm/marks")
class FirmMarks(MethodView):
    @roles("market-data", "trader", "admin")
    @acts_on(FIRM)
    @blp.arguments(FirmMarksSchema())
    @blp.response(200, FirmMarksResponseSchema)
    @_errors
    def post(self, body):
        """Firm marks: the latest prices for every portfolio (a portfolio's own mark is read instead when newer)"""
        return ok(firm.post_marks(uow(), body["prices"], actor()))


@blp.route("/groups")
class Groups(MethodView):
    @roles(*ANY)
    @acts_on(FIRM)
    @blp.response(200, GroupTreeSchema)
    @_errors
    def get(self):
        """The tree: the firm, its groups, and the portfolios under each"""
        return ok(firm.tree(uow()))

    @roles("admin")
    @acts_on(FIRM)
    @blp.arguments(GroupCreateSchema())
    @blp.response(201, LevelSchema)
    @_errors
    def post(self, body):
        """A new group under the firm, with its limits"""
        return ok(firm.create_group(uow(), body["group_id"], body["limits"], body.get("reason"), actor()), 201)


@blp.route("/groups/<string:group_id>")
class Group(MethodView):
    @roles(*ANY)
    @acts_on(FIRM)
    @blp.response(200, LevelSchema)
    @_errors
    def get(self, group_id):
        """A group (or `firm`): the aggregate of its portfolios, its limits and how much of each is used, its
        switches, its portfolios"""
        return ok(firm.group_view(uow(), _level(group_id)))


@blp.route("/groups/<string:group_id>/limits")
class GroupLimits(MethodView):
    @roles("admin")
    @acts_on(FIRM)
    @blp.arguments(LimitsSchema())
    @blp.response(200, LevelSchema)
    @_errors
    def put(self, body, group_id):
        """Replace a group's (or the firm's) limits; audited"""
        return ok(firm.set_limits(uow(), _level(group_id), body["limits"], body.get("reason"), actor()))


@blp.route("/groups/<string:group_id>/members")
class GroupMembers(MethodView):
    @roles("admin")
    @acts_on(FIRM)
    @blp.arguments(MemberSchema())
    @blp.response(200, MembershipSchema)
    @_errors
    def post(self, body, group_id):
        """Move a portfolio into this group (`firm`: directly under the firm); audited on both chains"""
        return ok(firm.assign(uow(), body["portfolio_id"], _level(group_id), body.get("reason"), actor()))


class LevelHaltSchema(HaltSchema):
    class Meta:
        exclude = ("portfolio_id",)


class LevelResumeSchema(ResumeSchema):
    class Meta:
        exclude = ("portfolio_id",)


@blp.route("/groups/<string:group_id>/halt")
class GroupHalt(MethodView):
    @roles("admin")
    @acts_on(FIRM)
    @blp.arguments(LevelHaltSchema())
    @blp.response(200, GroupStateSchema)
    @_errors
    def post(self, body, group_id):
        """Halt every portfolio under a group (`firm`: all of them): new risk rejected HALTED, reductions pass"""
        return ok(firm.halt(uow(), _level(group_id), body["reason"], actor()))


@blp.route("/groups/<string:group_id>/resume")
class GroupResume(MethodView):
    @roles("admin")
    @acts_on(FIRM)
    @blp.arguments(LevelResumeSchema())
    @blp.response(200, GroupStateSchema)
    @_errors
    def post(self, body, group_id):
        """Resume a group (or `firm`): refused (409) during an automatic switch's cooldown unless `force` with a
        reason"""
        return ok(firm.resume(uow(), _level(group_id), actor(), force=body["force"], reason=body.get("reason")))


class ReportQuerySchema(Schema):
    date = fields.Date(required=True, metadata={"description": "the firm's trading day (YYYY-MM-DD)"})
    format = fields.String(load_default="json", validate=validate.OneOf(["json", "csv", "html"]))


@blp.route("/reports/eod")
class EndOfDay(MethodView):
    @roles("compliance", "admin")
    @acts_on(FIRM)
    @blp.arguments(ReportQuerySchema(), location="query", unknown=RAISE)
    @blp.doc(responses={"200": {
        "description": "the end-of-day report: JSON, CSV (a line per portfolio, group and the firm) or a printable "
                       "HTML page",
        "content": {"application/json": {"schema": EndOfDaySchema}, "text/csv": {"schema": {"type": "string"}},
                    "text/html": {"schema": {"type": "string"}}}}})
    @_errors
    def get(self, query):
        """The end-of-day report of a trading day: per portfolio, group and the firm, the books at the cut-off, the
        day's PnL, limits' peak use, switches tripped, decisions by status and reason, admin actions"""
        out = report.eod(uow(), query["date"])
        name = f"rpm-eod-{query['date'].isoformat()}"
        if query["format"] == "csv":
            return Response(report.as_csv(out), mimetype="text/csv",
                            headers={"Content-Disposition": f"attachment; filename={name}.csv"})
        if query["format"] == "html":
            return Response(report.as_html(out), mimetype="text/html")
        return ok(out)
