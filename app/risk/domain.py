"""What RPM accepts: the alphabet of every identifier and the range of every number.

One definition, read by the engine (``TradeIntent``, ``RPMConfig``), the API's schemas and
the key store.

Identifiers are matched whole (``fullmatch``): ``re.match`` with ``$`` also accepts a final
newline, and ``"EURUSD\\n"`` would be a second symbol beside EURUSD, with limits of its own.

Numbers are bounded so that every value computed from them fits the stored precision,
NUMERIC(28, 10) (below 10^18, ten decimals):

- prices (an intent's, marks, fills, closes) in [1e-6, 1e9]; ATR in [1e-10, 1e9];
  quantities in [0, 1e12]; capital in [1, 1e12]; contract multipliers in [1e-6, 1e6];
- a position never exceeds ``max_units_per_symbol`` (at most 1e12 units) and is valued at
  prices of that range;
- what the books may hold, ``BOOKS_LIMIT``: equity and realised PnL within ±1e15 of the
  account currency. A mark, fill or close that would take them further is refused (422);
  an intent that would is REJECTED with ``OUT_OF_RANGE``. Within it, a decision's sizing
  and constraints are exact (``floor_units`` rounds with the precision they need).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Identifier:
    """An identifier's alphabet and length, as a regular expression without anchors."""

    pattern: str
    description: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def matches(self, value: Any) -> bool:
        return type(value) is str and self._regex.fullmatch(value) is not None

    @property
    def anchored(self) -> str:
        """For the OpenAPI document: its patterns are ECMA-262, where ``$`` is the end of the input."""
        return f"^(?:{self.pattern})$" if "|" in self.pattern else f"^{self.pattern}$"


# an API key's roles (app/keys.py); viewer: read-only (portfolio, health, metrics, events, the console), no
# trading, no admin, nothing of the audit trail's content (decisions, audit events, proofs, reports)
ROLES = ("trader", "compliance", "admin", "market-data", "viewer")
# the longest free-text reason (of a halt, a resume, a configuration change, any admin action), wherever one is
# given: a request's body or an `rpm` command
REASON_LENGTH = 1000
DEFAULT_PORTFOLIO = "default"  # the portfolio a request that names none acts on; it always exists

SYMBOL = Identifier(r"[A-Z0-9._-]{1,32}", "an upper-case symbol such as EURUSD: A-Z, 0-9, '.', '_' or '-', "
                                          "1 to 32 characters")
FX_PAIR = Identifier(r"[A-Z]{6}", "a six-letter FX pair BASEQUOTE such as EURUSD")
CURRENCY = Identifier(r"[A-Z]{3}", "a three-letter currency code such as USD")
PORTFOLIO_ID = Identifier(r"[A-Za-z0-9_-]{1,64}", "A-Z, a-z, 0-9, '_' or '-', 1 to 64 characters")
INTENT_ID = Identifier(r"[!-~]{1,128}", "printable ASCII without spaces, 1 to 128 characters")
KEY_NAME = Identifier(r"[A-Za-z0-9._@:-]{1,64}", "A-Z, a-z, 0-9, '.', '_', '@', ':' or '-', 1 to 64 characters")
DECISION_ID = Identifier(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "a decision id (a UUID)")
REQUEST_ID = Identifier(r"[A-Za-z0-9._-]{1,64}", "A-Z, a-z, 0-9, '.', '_' or '-', 1 to 64 characters")
TIME_ZONE = Identifier(r"[A-Za-z_+\-/0-9]{1,64}", "an IANA zone name such as UTC or America/New_York")
CLOCK_TIME = Identifier(r"([01]\d|2[0-3]):[0-5]\d", "HH:MM (24h)")


@dataclass(frozen=True)
class Bounds:
    """A closed range of finite numbers (``low_open``: the low end excluded)."""

    low: float
    high: float
    low_open: bool = False

    def contains(self, value: Any) -> bool:
        if type(value) not in (int, float, Decimal):
            return False
        number = float(value)
        if not math.isfinite(number):
            return False
        above = number > self.low if self.low_open else number >= self.low
        return above and number <= self.high

    @property
    def description(self) -> str:
        return f"a number {'>' if self.low_open else '>='} {self.low:g} and <= {self.high:g}"


PRICE = Bounds(1e-6, 1e9)
ATR = Bounds(1e-10, 1e9)
UNITS = Bounds(0, 1e12)
# money moved in or out of a portfolio, or a position's signed units as a broker reports them
SIGNED_AMOUNT = Bounds(-1e12, 1e12)
# how long an approval stands unfilled: a second to a year
TIME_IN_FORCE = Bounds(1, 366 * 86400)
# a quantity asked for (an intent's units, a partial close): more than nothing
QUANTITY = Bounds(0, 1e12, low_open=True)
CAPITAL = Bounds(1, 1e12)
MULTIPLIER = Bounds(1e-6, 1e6)
# an instrument's quantity or price increment (1e-8: a satoshi)
LOT = Bounds(1e-8, 1e6)
NOTIONAL = Bounds(0, 1e15)
UNIT_INTERVAL = Bounds(0, 1)
BOOKS_LIMIT = Decimal("1e15")


def within_books(equity: Decimal, realised_pnl: Decimal) -> bool:
    """Whether a portfolio's equity and realised PnL are within what the books may hold."""
    return abs(equity) <= BOOKS_LIMIT and abs(realised_pnl) <= BOOKS_LIMIT
