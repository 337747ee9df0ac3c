"""The service layer: each use case a function of primitives and a unit of work, answering JSON-ready dicts.

``trading`` decides intents; ``books`` applies marks, fills and closes; ``operator`` halts, resumes and
configures; ``portfolios`` makes and lists them; ``reading`` answers the reads. Each state change is one
portfolio transaction (``unit_of_work``): lock, let the engine decide, write, commit, answer. An answer is
returned only after the transaction holding it has committed. The HTTP layer and the CLI only translate.
"""

from __future__ import annotations

from .payloads import decision_payload
from .trading import Trading
from .unit_of_work import Actor, Clock, UnitOfWork, system_clock

__all__ = ["Actor", "Clock", "Services", "Trading", "UnitOfWork", "decision_payload", "system_clock"]


class Services:
    """What one process serves with: its unit of work, and its trading (which keeps the group commits)."""

    def __init__(self, uow: UnitOfWork, group_commit: bool = True):
        self.uow = uow
        self.trading = Trading(uow, group_commit)

    @property
    def db(self):  # noqa: ANN201 (the Database)
        return self.uow.db
