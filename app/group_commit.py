"""Group commit: single intents of one portfolio that arrive together in one process share one transaction.

Each portfolio has a group of its own (app/services/trading.py): a transaction locks every portfolio it decides
for, so an intent of another portfolio in it would wait for, and time out with, a lock that is not its own.

Every decision of a portfolio waits for the portfolio's lock, and most of the time a decision
holds it goes to the database: reading the state, writing the rows, the commit's flush to
disk. When several requests of one process are waiting anyway, the first one (the leader)
takes all the queued intents and decides them in arrival order in one transaction: one lock,
one read of the state, one commit. Each request still gets its own decision row, its own
answer (or its own refusal: a 422 or 409 of one intent changes nothing for the others), and
its answer only after the commit that holds it. When the leader's own answer is ready and
more intents have queued meanwhile, it hands the lead to the oldest waiting request and
returns.

Nothing waits for company: a request that finds no leader leads at once, so a lone request
pays nothing, and the batches are as large as the load makes them. What queues while the leader
waits for the lock joins its transaction: ``decide`` gets ``more(accept)``, which takes from the
queue (in arrival order) the intents ``accept`` says the transaction can decide — those of the
portfolios it has locked — once the lock is held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class _Slot:
    __slots__ = ("item", "answer", "error", "done", "lead", "wake")

    def __init__(self, item: Any):
        self.item = item
        self.answer: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.lead = False
        self.wake = threading.Event()

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.answer


class GroupCommit:
    """Runs ``decide(items, more) -> answers`` (an answer may be an exception) over what queued; the
    answers are those of ``items`` and then of what ``more`` gave, in that order."""

    def __init__(self, decide: Callable[[list[Any], Callable[[Callable[[Any], bool]], list[Any]]], list[Any]],
                 max_batch: int = 64):
        self._decide = decide
        self._max = max_batch
        self._mutex = threading.Lock()
        self._queue: list[_Slot] = []
        self._leading = False

    def submit(self, item: Any) -> Any:
        slot = _Slot(item)
        with self._mutex:
            self._queue.append(slot)
            lead = not self._leading
            self._leading = True
        if not lead:
            slot.wake.wait()
            if slot.done:
                return slot.outcome()
        # the leader: decide what queued, until this request has its answer
        while True:
            with self._mutex:
                batch, self._queue = self._queue[:self._max], self._queue[self._max:]
            self._run(batch)
            with self._mutex:
                if not self._queue:
                    self._leading = False
                    break
                if slot.done:  # more queued meanwhile: the oldest waiting request leads on
                    successor = self._queue[0]
                    successor.lead = True
                    successor.wake.set()
                    break
        return slot.outcome()

    def _run(self, batch: list[_Slot]) -> None:
        taken = list(batch)

        def more(accept: Callable[[Any], bool]) -> list[Any]:
            """What queued since the batch was taken and ``accept`` takes, in arrival order (up to the maximum)."""
            with self._mutex:
                room = self._max - len(taken)
                extra = [s for s in self._queue if accept(s.item)][:max(0, room)]
                if extra:
                    chosen = {id(s) for s in extra}
                    self._queue = [s for s in self._queue if id(s) not in chosen]
            taken.extend(extra)
            return [s.item for s in extra]

        try:
            answers = self._decide([s.item for s in batch], more)
        except BaseException as exc:  # the transaction failed (503, ...): the answer of every request in it
            answers = [exc] * len(taken)
        for s, answer in zip(taken, answers, strict=True):
            if isinstance(answer, BaseException):
                s.error = answer
            else:
                s.answer = answer
            s.done = True
            s.wake.set()
