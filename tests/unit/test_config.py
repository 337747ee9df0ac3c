import json
import subprocess
import sys

import pytest

from app.presets import load_preset, preset_names, shared_instruments
from app.risk import ConfigError, RPMConfig


def test_defaults_are_the_spec_defaults():
    c = RPMConfig()
    assert (c.total_capital, c.risk_per_trade, c.atr_multiplier) == (100_000.0, 0.01, 1.5)
    assert dict(c.regime_adjustments) == {"TRENDING": 1.2, "RANGING": 1.0, "VOLATILE": 0.7, "STRESSED": 0.3}
    assert (c.max_concurrent_positions, c.max_units_per_symbol, c.max_symbol_exposure_pct) == (8, 200_000.0, 0.30)
    assert (c.max_currency_exposure_pct, c.max_gross_exposure_pct, c.max_net_exposure_pct) == (0.5, 2.0, 1.0)
    assert (c.max_drawdown, c.max_daily_drawdown, c.daily_loss_limit, c.weekly_loss_limit) == (0.10, 0.03, 0.02, 0.05)
    assert (c.min_confidence_threshold, c.volatility_shock_multiplier, c.cooldown_seconds) == (0.60, 3.0, 3600)
    assert (c.max_intents_per_second, c.price_collar_pct, c.min_position_units) == (100, 0.05, 1000.0)
    assert (c.correlation_threshold, c.correlation_size_multiplier, c.stressed_max_positions) == (0.7, 0.5, 2)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"risk_per_trade": 0.5}, "risk_per_trade"),
        ({"risk_per_trade": 0}, "risk_per_trade"),
        ({"total_capital": -1.0}, "total_capital"),
        ({"max_drawdown": 0.0}, "max_drawdown"),
        ({"max_drawdown": float("nan")}, "max_drawdown"),
        ({"atr_multiplier": float("inf")}, "atr_multiplier"),
        ({"max_concurrent_positions": 2.5}, "max_concurrent_positions"),
        ({"max_concurrent_positions": True}, "max_concurrent_positions"),
        ({"regime_adjustments": {"PANIC": 1.0}}, "regime_adjustments"),
        ({"trading_timezone": "Mars/Olympus"}, "trading_timezone"),
        ({"trading_day_rollover": "25:00"}, "trading_day_rollover"),
        ({"account_currency": "usd"}, "account_currency"),
        ({"disallowed_regimes": ["PANIC"]}, "disallowed_regimes"),
        ({"vol_high_percentile": 0.99}, "vol_extreme_percentile"),
        ({"instruments": {"AAPL": {"currency": "dollars"}}}, "instruments.AAPL.currency"),
    ],
)
def test_invalid_parameters_are_refused_naming_the_field(changes, field):
    with pytest.raises(ConfigError) as err:
        RPMConfig.from_dict(changes)
    assert err.value.field == field
    assert field in str(err.value)


def test_error_message_gives_the_allowed_range():
    with pytest.raises(ConfigError, match=r"risk_per_trade: must be in \(0, 0.1\], got 0.5"):
        RPMConfig(risk_per_trade=0.5)


def test_unknown_parameter_is_refused():
    with pytest.raises(ConfigError, match="unknown parameter"):
        RPMConfig.from_dict({"risk_per_trad": 0.01})


def test_hash_is_independent_of_key_order_and_changes_with_any_value():
    a = RPMConfig.from_dict({"risk_per_trade": 0.02, "max_drawdown": 0.2})
    b = RPMConfig.from_dict({"max_drawdown": 0.2, "risk_per_trade": 0.02})
    assert a.config_hash == b.config_hash and a == b
    assert a.config_hash != RPMConfig().config_hash
    assert len(a.config_hash) == 64


def test_hash_is_identical_across_processes():
    code = "from app.risk import RPMConfig; print(RPMConfig(restricted_symbols=('XAUUSD','BTCUSD')).config_hash)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123"}).stdout.strip()
    assert other == RPMConfig(restricted_symbols=("BTCUSD", "XAUUSD")).config_hash


def test_round_trip_through_dict_and_json():
    c = RPMConfig(restricted_symbols=("XAUUSD",), instruments={"AAPL": {"asset_class": "equity", "currency": "USD"}},
                  volatility_baselines={"EURUSD": 0.001}, trading_timezone="America/New_York",
                  trading_day_rollover="17:00", trading_week_start=6)
    again = RPMConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c and again.config_hash == c.config_hash


def test_presets_follow_the_spec_table():
    assert preset_names() == ["aggressive", "balanced", "conservative"]
    # the balanced preset is the defaults, with the shared instruments (config/instruments/shared.json)
    assert load_preset("balanced") == RPMConfig(instruments=shared_instruments())
    assert {"AAPL", "ES", "BTCUSD"} <= set(load_preset("conservative").instruments)
    cons, aggr = load_preset("conservative"), load_preset("aggressive")
    assert (cons.risk_per_trade, cons.max_drawdown, cons.daily_loss_limit, cons.weekly_loss_limit,
            cons.max_symbol_exposure_pct) == (0.005, 0.05, 0.01, 0.03, 0.20)
    assert dict(cons.regime_adjustments) == {"TRENDING": 1.0, "RANGING": 0.8, "VOLATILE": 0.5, "STRESSED": 0.2}
    assert (aggr.risk_per_trade, aggr.max_drawdown, aggr.daily_loss_limit, aggr.weekly_loss_limit,
            aggr.max_symbol_exposure_pct) == (0.02, 0.15, 0.03, 0.08, 0.40)
    assert dict(aggr.regime_adjustments) == {"TRENDING": 1.5, "RANGING": 1.2, "VOLATILE": 0.8, "STRESSED": 0.5}


def test_unknown_preset_is_an_error():
    with pytest.raises(ConfigError, match="unknown preset"):
        load_preset("yolo")
