import pytest

from app.risk import RiskPortfolioManager, RPMConfig

from ..conftest import T0, Clock  # noqa: F401  (re-exported for the unit tests)


def intent(**overrides):
    base = dict(symbol="EURUSD", direction=1, confidence_score=0.75, regime="TRENDING",
                atr=0.0010, vol_percentile=0.50, current_price=1.1000)
    base.update(overrides)
    return base


# limits wide enough that sizing alone decides the size
WIDE = dict(max_units_per_symbol=1e12, max_symbol_exposure_pct=100.0, max_currency_exposure_pct=100.0,
            max_gross_exposure_pct=100.0, max_net_exposure_pct=100.0)


@pytest.fixture
def make_rpm(clock):
    def make(**config):
        return RiskPortfolioManager(config=RPMConfig(**config), clock=clock)

    return make
