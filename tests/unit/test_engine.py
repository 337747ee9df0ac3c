import ast
import json
from pathlib import Path

import pytest

from app.risk import IntentError, PortfolioState, RPMConfig, TradeIntent, decide
from app.risk.kill_switches import trading_day

from .conftest import T0, intent


def test_end_to_end_approvals_and_rejections_feed_the_metrics(make_rpm):
    rpm = make_rpm()
    assert rpm.process_trade_intent(**intent()).decision.approved
    assert rpm.process_trade_intent(**intent(confidence_score=0.4)).decision.reason == "CONFIDENCE_TOO_LOW"
    assert rpm.process_trade_intent(**intent()).decision.reason == "SYMBOL_EXPOSURE"
    out = rpm.process_trade_intent(**intent(symbol="GBPUSD", current_price=1.25))
    m = out.risk_metrics
    assert (m["total_decisions"], m["trades_approved"], m["trades_rejected"]) == (4, 2, 2)
    assert m["approval_rate"] == 0.5
    assert m["rejections_by_reason"] == {"CONFIDENCE_TOO_LOW": 1, "SYMBOL_EXPOSURE": 1}
    assert m["rejections_by_category"] == {"confidence": 1, "exposure": 1}
    assert m["sizing"]["max_approved_units"] == 27272.72
    assert m["latency_ms"]["count"] == 4
    assert out.portfolio_state["open_positions"] == 2


def test_identical_inputs_give_identical_decisions():
    config = RPMConfig()
    state = PortfolioState.new(config)
    i = TradeIntent.create(config, **intent())
    a = decide(state, i, config, T0, "d-1")
    b = decide(state, i, config, T0, "d-1")
    assert a.decision == b.decision
    assert a.state.to_dict() == b.state.to_dict()


def test_decide_does_not_modify_the_state_it_is_given():
    config = RPMConfig()
    state = PortfolioState.new(config)
    before = state.to_dict()
    decide(state, TradeIntent.create(config, **intent()), config, T0, "d-1")
    assert state.to_dict() == before


def test_what_if_changes_nothing(make_rpm):
    rpm = make_rpm()
    rpm.process_trade_intent(**intent(symbol="GBPUSD", current_price=1.25))
    before = (rpm.state.to_dict(), rpm.get_metrics(), len(rpm.decisions))
    d = rpm.what_if(**intent())
    assert d.approved
    assert (rpm.state.to_dict(), rpm.get_metrics(), len(rpm.decisions)) == before


def test_portfolio_state_round_trips_through_json(make_rpm):
    rpm = make_rpm(volatility_baselines={"EURUSD": 0.001})
    rpm.update_marks({"EURUSD": 1.1, "GBPUSD": 1.25})
    rpm.process_trade_intent(**intent())
    rpm.process_trade_intent(**intent(symbol="EURUSD", atr=0.01))  # symbol halt
    rpm.halt("test")
    data = json.loads(json.dumps(rpm.state.to_dict()))
    again = PortfolioState.from_dict(data)
    assert again.to_dict() == rpm.state.to_dict()
    assert again == rpm.state


def test_decision_serialises_in_the_spec_shape(make_rpm):
    out = make_rpm().process_trade_intent(**intent(intent_id="sig-1"))
    d = json.loads(json.dumps(out.to_dict()))["decision"]
    assert set(d) >= {"id", "status", "reason", "decided_at", "approved_trade", "rejected_trade", "breakdown",
                      "config_hash"}
    assert {k: d["approved_trade"][k] for k in ("symbol", "direction", "position_units", "confidence_score",
            "regime", "atr", "risk_per_trade")} == {
        "symbol": "EURUSD", "direction": 1, "position_units": 27272.72, "confidence_score": 0.75,
        "regime": "TRENDING", "atr": 0.001, "risk_per_trade": 1000.0}
    assert d["rejected_trade"] is None
    assert set(d["breakdown"]) >= {"kill_switches", "sizing", "constraints"}


def test_rejected_decision_has_reason_code_message_and_context(make_rpm):
    d = make_rpm().process_trade_intent(**intent(confidence_score=0.3)).decision.to_dict()
    assert d["status"] == "REJECTED" and d["approved_trade"] is None
    assert d["rejected_trade"]["reason_code"] == "CONFIDENCE_TOO_LOW"
    assert "0.30" in d["rejected_trade"]["rejection_reason"]
    assert d["rejected_trade"]["context"] == {"confidence_score": 0.3, "threshold": 0.6}


@pytest.mark.parametrize(
    "field, value",
    [
        ("atr", -0.001), ("atr", 0), ("atr", float("nan")), ("current_price", float("inf")),
        ("confidence_score", 1.5), ("direction", 2), ("direction", True), ("regime", "BULL"),
        ("symbol", "EUR/USD"), ("symbol", "XAUXAU"), ("symbol", "AAPL"), ("vol_percentile", -0.1),
        ("confidence_score", "0.7"), ("portfolio_id", "bad id!"),
    ],
)
def test_invalid_intents_are_refused_field_by_field(make_rpm, field, value):
    rpm = make_rpm()
    with pytest.raises(IntentError) as err:
        rpm.process_trade_intent(**intent(**{field: value}))
    assert field in err.value.errors
    assert rpm.decisions == []


def test_missing_and_unknown_fields_are_reported_together():
    with pytest.raises(IntentError) as err:
        TradeIntent.create(symbol="EURUSD", direction=1, colour="red")
    assert err.value.errors["colour"] == "unknown field"
    assert err.value.errors["atr"] == "required" and err.value.errors["regime"] == "required"


def test_trading_day_label_is_stable_around_midnight_utc():
    assert trading_day(T0, RPMConfig()).isoformat() == "2026-03-02"


RISK = Path(__file__).resolve().parents[2] / "app" / "risk"
FORBIDDEN = {"flask", "sqlalchemy", "psycopg", "requests", "socket", "urllib", "http", "subprocess", "alembic"}


def test_the_engine_imports_nothing_that_does_io():
    for path in RISK.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_only_the_facade_reads_the_clock():
    for path in RISK.glob("*.py"):
        source = path.read_text()
        if path.name == "facade.py":
            continue
        assert ".now(" not in source and "utcnow" not in source and "time.time" not in source, path.name


def test_audit_hashing_gives_one_form_to_numbers_whatever_the_database_did_to_them():
    from decimal import Decimal

    from app.store.audit import canonical

    # JSONB has no negative zero and prints 1e16 as an integer; NUMERIC pads with zeros
    written = {"pnl": -0.0, "big": 1e16, "units": Decimal("27272.72"), "nested": [{"x": 1.50}]}
    read_back = {"pnl": 0.0, "big": 10000000000000000, "units": Decimal("27272.7200000000"), "nested": [{"x": 1.5}]}
    assert canonical("decision", written) == canonical("decision", read_back)
