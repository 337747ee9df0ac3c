"""The use cases of app/services on a unit of work in memory: what each one decides, records on the audit chain,
commits, and refuses (changing nothing). The same use cases on PostgreSQL: tests/integration."""

from __future__ import annotations

import pytest

from app.errors import Conflict, DatabaseRefused, Invalid, NotFound, Unavailable
from app.risk import RPMConfig
from app.services import Actor, Trading, books, operator, portfolios, reading
from app.store import models as m
from app.store.database import DatabaseUnavailable, DataRejected

from .conftest import intent
from .fake_uow import FakeUnitOfWork

TRADER = Actor("signals", "trader", key_id="k1")
ADMIN = Actor("risk-officer", "admin", key_id="k2")


@pytest.fixture
def uow(clock):
    return FakeUnitOfWork(clock, RPMConfig(total_capital=100_000.0))


@pytest.fixture
def trading(uow):
    return Trading(uow, group_commit=False)


def chain(uow, portfolio_id="default"):
    """The portfolio's audit chain as committed: (kind, audit_seq), in order."""
    sealed = [(model.__name__, v["audit_seq"], v["prev_hash"], v["row_hash"]) for model, v in uow.store.rows
              if v.get("portfolio_id") == portfolio_id and "row_hash" in v]
    return sorted(sealed, key=lambda r: r[1])


def assert_linked(uow, portfolio_id="default"):
    rows = chain(uow, portfolio_id)
    assert [seq for _, seq, *_ in rows] == list(range(1, len(rows) + 1))
    for (_, _, _, previous), (_, _, prev_hash, _) in zip(rows, rows[1:], strict=False):
        assert prev_hash == previous
    assert uow.store.portfolios[portfolio_id].row.audit_head == (rows[-1][3] if rows else None)


def test_a_decision_is_committed_with_its_ledger_entry_on_the_chain_and_answered(uow, trading):
    answer = trading.process_trade(intent(intent_id="t1"), TRADER)
    d = answer["decision"]
    assert d["status"] == "APPROVED" and d["approved_trade"]["position_units"] > 0
    assert answer["portfolio_state"]["open_positions"] == 1 and answer["risk_metrics"]["total_decisions"] == 1
    [stored] = uow.store.of(m.Decision)
    assert (stored["id"], stored["seq"], stored["key_id"], stored["key_role"]) == (d["id"], 1, "k1", "trader")
    [entry] = uow.store.of(m.LedgerEntry)
    assert (entry["kind"], entry["decision_id"], entry["seq"]) == ("open", d["id"], 1)
    stored = uow.store.portfolios["default"]
    assert stored.state.positions["EURUSD"].units == entry["units"]
    assert (stored.row.last_seq, stored.row.last_ledger_seq) == (1, 1)
    assert_linked(uow)


def test_the_default_portfolio_is_made_by_the_transaction_that_finds_it_missing(uow, trading):
    assert uow.store.portfolios == {}
    trading.process_trade(intent(), TRADER)
    assert uow.store.commits == 1 and set(uow.store.portfolios) == {"default"}
    with pytest.raises(NotFound):
        trading.process_trade(intent(portfolio_id="nowhere"), TRADER)
    with pytest.raises(Invalid):
        trading.process_trade(intent(portfolio_id="bad id\n"), TRADER)


def test_a_retry_is_the_stored_decision_and_a_reused_id_with_another_payload_a_conflict(uow, trading):
    first = trading.process_trade(intent(intent_id="same"), TRADER)["decision"]
    again = trading.process_trade(intent(intent_id="same"), TRADER)["decision"]
    assert again["replay"] is True and again["id"] == first["id"] and len(uow.store.of(m.Decision)) == 1
    with pytest.raises(Conflict) as refused:
        trading.process_trade(intent(intent_id="same", confidence_score=0.9), TRADER)
    assert refused.value.extra["decision_id"] == first["id"] and len(uow.store.of(m.Decision)) == 1


def test_a_batch_with_an_invalid_intent_writes_nothing(uow, trading):
    trading.process_trade(intent(), TRADER)
    before = (uow.store.commits, len(uow.store.rows))
    with pytest.raises(Invalid) as refused:
        trading.process_trades([intent(intent_id="a"), intent(intent_id="b", atr=-1.0)], TRADER)
    assert refused.value.message.startswith("intent 1:")
    assert (uow.store.commits, len(uow.store.rows)) == before


def test_a_batch_is_one_commit_of_its_decisions_in_order(uow, trading):
    out = trading.process_trades([intent(intent_id=f"b{n}", confidence_score=0.3 + n / 10) for n in range(4)], TRADER)
    assert [d["intent_id"] for d in out["decisions"]] == ["b0", "b1", "b2", "b3"]
    assert uow.store.commits == 1 and [d["seq"] for d in uow.store.of(m.Decision)] == [1, 2, 3, 4]
    assert_linked(uow)


def test_what_if_decides_and_stores_nothing(uow, trading):
    trading.process_trade(intent(), TRADER)
    rows = len(uow.store.rows)
    answer = trading.what_if(intent(direction=-1))
    assert answer["decision"]["what_if"] is True and len(uow.store.rows) == rows


def test_a_halt_is_audited_with_before_and_after_and_holds_until_a_resume(uow, trading):
    trading.process_trade(intent(), TRADER)
    halted = operator.halt(uow, "default", "news", ADMIN)
    assert halted["trading_state"] == "HALTED"
    [action] = uow.store.of(m.AdminAction)
    assert (action["action"], action["actor"], action["actor_key_id"], action["reason"]) == (
        "halt", "risk-officer", "k2", "news")
    assert (action["before"]["trading_state"], action["after"]["trading_state"]) == ("ACTIVE", "HALTED")
    d = trading.process_trade(intent(symbol="GBPUSD", current_price=1.27), TRADER)["decision"]
    assert (d["status"], d["reason"]) == ("REJECTED", "HALTED")
    assert reading.portfolio(uow, "default")["trading_state"] == "HALTED"
    assert operator.resume(uow, "default", ADMIN)["trading_state"] == "ACTIVE"
    assert [a["action"] for a in uow.store.of(m.AdminAction)] == ["halt", "resume"]
    assert_linked(uow)


def test_a_refused_action_changes_nothing(uow, trading, clock):
    trading.process_trade(intent(), TRADER)
    before = (uow.store.commits, len(uow.store.rows), uow.store.portfolios["default"].row.audit_head)
    with pytest.raises(Invalid):
        books.apply_marks(uow, "default", {"EURUSD": 1.1, "NOTASYMBOL": 1.0}, ADMIN)
    with pytest.raises(Invalid):
        operator.halt(uow, "default", "", ADMIN)
    with pytest.raises(Invalid):
        operator.put_config(uow, "default", {"total_capital": 5.0}, None, ADMIN)
    with pytest.raises(NotFound):
        books.close_position(uow, "default", "GBPUSD", 1.27, ADMIN)
    assert (uow.store.commits, len(uow.store.rows), uow.store.portfolios["default"].row.audit_head) == before


def test_marks_move_equity_and_a_drawdown_trips_its_switch_on_the_chain(uow, trading):
    units = trading.process_trade(intent(), TRADER)["decision"]["approved_trade"]["position_units"]
    out = books.apply_marks(uow, "default", {"EURUSD": 1.1 - 12_000 / units}, ADMIN)
    assert "drawdown" in out["tripped"] and out["portfolio_state"]["trading_state"] == "HALTED"
    [point] = uow.store.of(m.EquityPoint)
    assert float(point["equity"]) == pytest.approx(out["portfolio_state"]["equity"])
    assert {e["switch"] for e in uow.store.of(m.SwitchEventRow)} >= {"drawdown"}
    assert_linked(uow)


def test_a_fill_books_once(uow, trading):
    d = trading.process_trade(intent(), TRADER)["decision"]
    units = d["approved_trade"]["position_units"]
    with pytest.raises(NotFound):
        books.record_fill(uow, "default", "no-such-decision", units, 1.1, TRADER)
    out = books.record_fill(uow, "default", d["id"], units / 2, 1.1001, TRADER)
    assert out["released_units"] == pytest.approx(units / 2)
    assert [e["kind"] for e in uow.store.of(m.LedgerEntry)] == ["open", "fill"]
    with pytest.raises(Conflict):
        books.record_fill(uow, "default", d["id"], units / 2, 1.1001, TRADER)
    closed = books.close_position(uow, "default", "EURUSD", 1.1002, TRADER)
    assert closed["portfolio_state"]["open_positions"] == 0
    assert [e["kind"] for e in uow.store.of(m.LedgerEntry)] == ["open", "fill", "close"]


def test_a_new_configuration_is_a_version_the_next_decisions_name(uow, trading):
    trading.process_trade(intent(), TRADER)
    config = reading.get_config(uow, "default")
    assert config["version"] == 1
    body = {**config["config"], "min_confidence_threshold": 0.8}
    changed = operator.put_config(uow, "default", body, "tighter", ADMIN)
    assert (changed["version"], changed["created_by"], changed["reason"]) == (2, "risk-officer", "tighter")
    assert reading.get_config(uow, "default")["config"]["min_confidence_threshold"] == 0.8
    d = trading.process_trade(intent(symbol="GBPUSD", current_price=1.27), TRADER)["decision"]
    assert (d["config_version"], d["reason"]) == (2, "CONFIDENCE_TOO_LOW")
    [action] = [a for a in uow.store.of(m.AdminAction) if a["action"] == "config_change"]
    was = config["config"]["min_confidence_threshold"]
    assert action["after"]["changed"] == {"min_confidence_threshold": {"before": was, "after": 0.8}}


def test_a_portfolio_is_made_once_on_its_own_chain(uow):
    made = portfolios.create_portfolio(uow, "fx-desk", 250_000.0, "conservative", None, ADMIN)
    assert (made["portfolio_id"], made["starting_capital"]) == ("fx-desk", 250_000.0)
    with pytest.raises(Conflict):
        portfolios.create_portfolio(uow, "fx-desk", None, None, None, ADMIN)
    with pytest.raises(Invalid):
        portfolios.create_portfolio(uow, "_system", None, None, None, ADMIN)
    with pytest.raises(Invalid):
        portfolios.create_portfolio(uow, "x", None, "no-such-preset", None, ADMIN)
    assert [a["action"] for a in uow.store.of(m.AdminAction, "fx-desk")] == ["portfolio_create"]
    assert_linked(uow, "fx-desk")


def test_database_failures_are_the_services_errors(uow, trading):
    uow.fail_with = DatabaseUnavailable("database unavailable (OperationalError)")
    with pytest.raises(Unavailable):
        trading.process_trade(intent(), TRADER)
    uow.fail_with = DataRejected("the database refused a value of this request")
    with pytest.raises(DatabaseRefused) as refused:
        operator.halt(uow, "default", "news", ADMIN)
    assert refused.value.status == 422 and uow.store.commits == 0


def test_reads_never_write_and_a_missing_default_is_listed_without_being_stored(uow, trading):
    listed = portfolios.list_portfolios(uow, None)
    assert [p["portfolio_id"] for p in listed] == ["default"] and uow.store.commits == 0
    assert reading.portfolio(uow, "default")["trading_state"] == "ACTIVE"
    assert reading.get_config(uow, "default")["version"] == 1
    trading.what_if(intent())
    assert uow.store.commits == 0 and uow.store.portfolios == {}


def test_an_unknown_portfolio_is_named_even_when_default_is_missing_too(uow, trading):
    with pytest.raises(NotFound) as refused:
        trading.process_trades([intent(), intent(portfolio_id="nowhere")], TRADER)
    assert "nowhere" in refused.value.message and uow.store.commits == 0
