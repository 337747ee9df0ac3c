"""The RPM risk engine: pure rules, no Flask, no database, no clock of its own.

    from app.risk import RiskPortfolioManager, RPMConfig, TradeApprovalStatus
"""

from .accounting import CapitalError, FillError, OutOfRange
from .config import ConfigError, Instrument, RPMConfig
from .engine import Outcome, decide, health, portfolio_summary
from .facade import RiskPortfolioManager, RPMOutput
from .kill_switches import CooldownActive, ResumeError
from .model import (
    Booking,
    Decision,
    IntentError,
    PortfolioState,
    Position,
    ReasonCode,
    Switch,
    SwitchEvent,
    TradeApprovalStatus,
    TradeIntent,
)

__all__ = [
    "Booking", "CapitalError", "ConfigError", "CooldownActive", "Decision", "FillError", "Instrument", "IntentError",
    "OutOfRange", "Outcome", "PortfolioState", "Position", "RPMConfig", "RPMOutput", "ReasonCode", "ResumeError",
    "RiskPortfolioManager", "Switch", "SwitchEvent", "TradeApprovalStatus", "TradeIntent",
    "decide", "health", "portfolio_summary",
]
