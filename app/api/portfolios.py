"""Portfolios: create (admin) and list (the key's own)."""

from __future__ import annotations

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from app.risk import domain
from app.services import portfolios

from .auth import ANY, roles
from .common import ERROR_RESPONSES, Blueprint, actor, ok, uow
from .schemas import PortfolioListSchema, PortfolioSchema, identifier, within
from .scope import ONE, VISIBLE, acts_on, current

blp = Blueprint("portfolios", __name__, description="Portfolios")


class PortfolioCreateSchema(Schema):
    portfolio_id = identifier(domain.PORTFOLIO_ID, required=True, metadata={"example": "fx-desk"})
    capital = within(domain.CAPITAL, metadata={"description": "starting capital; default: the preset's"})
    preset = fields.String(validate=validate.OneOf(["conservative", "balanced", "aggressive"]))
    config = fields.Dict(metadata={"description": "a full configuration instead of a preset"})


@blp.route("/portfolios")
class Portfolios(MethodView):
    @roles(*ANY)
    @acts_on(VISIBLE)
    @blp.response(200, PortfolioListSchema)
    @blp.alt_response(503, description=ERROR_RESPONSES[503])
    def get(self):
        """The portfolios this key may use"""
        return ok({"portfolios": portfolios.list_portfolios(uow(), current().visible)})

    @roles("admin")
    @acts_on(ONE)
    @blp.arguments(PortfolioCreateSchema())
    @blp.response(201, PortfolioSchema)
    @blp.alt_response(409, description="The portfolio already exists")
    @blp.alt_response(422, description=ERROR_RESPONSES[422])
    @blp.alt_response(503, description=ERROR_RESPONSES[503])
    def post(self, body):
        """Create a portfolio: id, capital, and a preset or a configuration"""
        if "preset" in body and "config" in body:
            from app.errors import Invalid

            raise Invalid("give a preset or a config, not both", {"config": ["give a preset or a config, not both"]})
        created = portfolios.create_portfolio(uow(), current().portfolio, body.get("capital"), body.get("preset"),
                                             body.get("config"), actor())
        return ok(created, 201)
