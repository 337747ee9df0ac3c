"""Portfolios: create (admin) and list (the key's own)."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from app.risk.model import PORTFOLIO_ID_RE

from .auth import ANY, current_principal, roles
from .common import ERROR_RESPONSES, actor, ok, service
from .schemas import AnyObjectSchema, positive

blp = Blueprint("portfolios", __name__, description="Portfolios")


class PortfolioCreateSchema(Schema):
    portfolio_id = fields.String(required=True, validate=validate.Regexp(
        PORTFOLIO_ID_RE, error="must match [A-Za-z0-9_-]{{1,64}}"))
    capital = positive(metadata={"description": "starting capital; default: the preset's"})
    preset = fields.String(validate=validate.OneOf(["conservative", "balanced", "aggressive"]))
    config = fields.Dict(metadata={"description": "a full configuration instead of a preset"})


@blp.route("/portfolios")
class Portfolios(MethodView):
    @roles(*ANY)
    @blp.response(200, AnyObjectSchema)
    @blp.alt_response(503, description=ERROR_RESPONSES[503])
    def get(self):
        """The portfolios this key may use"""
        principal = current_principal()
        return ok({"portfolios": service().list_portfolios(principal.portfolios if principal else None)})

    @roles("admin")
    @blp.arguments(PortfolioCreateSchema())
    @blp.response(201, AnyObjectSchema)
    @blp.alt_response(409, description="The portfolio already exists")
    @blp.alt_response(422, description=ERROR_RESPONSES[422])
    @blp.alt_response(503, description=ERROR_RESPONSES[503])
    def post(self, body):
        """Create a portfolio: id, capital, and a preset or a configuration"""
        if "preset" in body and "config" in body:
            from app.errors import Invalid

            raise Invalid("give a preset or a config, not both", {"config": ["give a preset or a config, not both"]})
        created = service().create_portfolio(body["portfolio_id"], body.get("capital"), body.get("preset"),
                                             body.get("config"), actor())
        return ok(created, 201)
