from datetime import UTC, datetime, timedelta

import pytest

from app.risk import RiskPortfolioManager, RPMConfig

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday, mid-day UTC


class Clock:
    """A clock the tests move by hand."""

    def __init__(self, start: datetime = T0):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


def intent(**overrides):
    base = dict(symbol="EURUSD", direction=1, confidence_score=0.75, regime="TRENDING",
                atr=0.0010, vol_percentile=0.50, current_price=1.1000)
    base.update(overrides)
    return base


# limits wide enough that sizing alone decides the size
WIDE = dict(max_units_per_symbol=1e12, max_symbol_exposure_pct=100.0, max_currency_exposure_pct=100.0,
            max_gross_exposure_pct=100.0, max_net_exposure_pct=100.0)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def make_rpm(clock):
    def make(**config):
        return RiskPortfolioManager(config=RPMConfig(**config), clock=clock)

    return make
