"""Group commit: concurrent requests share a transaction, each keeps its own answer."""

from __future__ import annotations

import random
import threading
import time

import pytest

from app.group_commit import GroupCommit


class Refused(Exception):
    pass


def run_threads(target, n):
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a request never got its answer"


def test_a_lone_request_is_decided_at_once_alone():
    batches = []
    group = GroupCommit(lambda items, more: batches.append(list(items)) or [f"answer {i}" for i in items])
    assert group.submit("a") == "answer a"
    assert group.submit("b") == "answer b"
    assert batches == [["a"], ["b"]]


def test_requests_that_queue_while_one_is_decided_share_the_next_transaction_in_arrival_order():
    batches, first_started, release = [], threading.Event(), threading.Event()

    def decide(items, more):
        batches.append(list(items))
        if len(batches) == 1:
            first_started.set()
            assert release.wait(10)
        return [f"answer {i}" for i in items]

    group = GroupCommit(decide)
    answers = {}
    leader = threading.Thread(target=lambda: answers.__setitem__("lead", group.submit("lead")))
    leader.start()
    assert first_started.wait(10)
    followers = []
    for i in range(5):  # queued one after the other while the leader's transaction runs
        t = threading.Thread(target=lambda i=i: answers.__setitem__(i, group.submit(i)))
        t.start()
        followers.append(t)
        deadline = time.monotonic() + 10
        while len(group._queue) < i + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
    release.set()
    for t in [leader, *followers]:
        t.join(10)
    assert batches == [["lead"], [0, 1, 2, 3, 4]]
    assert answers == {"lead": "answer lead", **{i: f"answer {i}" for i in range(5)}}


def test_a_refused_intent_is_its_request_answer_only():
    group = GroupCommit(lambda items, more: [Refused(i) if i == "bad" else i.upper() for i in items])
    results = {}

    def submit(i):
        item = "bad" if i == 3 else f"ok{i}"
        try:
            results[i] = group.submit(item)
        except Refused as exc:
            results[i] = exc

    run_threads(submit, 8)
    assert isinstance(results.pop(3), Refused)
    assert results == {i: f"OK{i}" for i in range(8) if i != 3}


def test_a_failed_transaction_is_the_answer_of_every_request_in_it_and_the_next_one_runs():
    calls = []

    def decide(items, more):
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("database unavailable")
        return list(items)

    group = GroupCommit(decide)
    with pytest.raises(RuntimeError):
        group.submit("x")
    assert group.submit("y") == "y"


def test_many_threads_each_get_their_own_answer_and_no_one_waits_forever():
    sizes = []

    def decide(items, more):
        time.sleep(random.uniform(0, 0.002))  # (awaiting the lock)
        items = [*items, *more(lambda item: item[1] % 2 == 0)]  # some join, none beyond the maximum
        sizes.append(len(items))
        return [("answer", i) for i in items]

    group = GroupCommit(decide, max_batch=8)
    wrong = []

    def client(n):
        for k in range(100):
            if group.submit((n, k)) != ("answer", (n, k)):
                wrong.append((n, k))

    run_threads(client, 16)
    assert not wrong
    assert sum(sizes) == 1600 and max(sizes) <= 8
    assert max(sizes) > 1  # under this load, transactions were shared


def test_what_queues_while_the_leader_waits_for_its_lock_joins_its_transaction_if_accepted():
    """``more(accept)``: the requests queued since the batch was taken that the transaction can decide
    (here: those of portfolio "p"), in arrival order; the others stay queued for the next one."""
    batches, locking, locked = [], threading.Event(), threading.Event()

    def decide(items, more):
        if items == [("p", "lead")]:
            locking.set()
            assert locked.wait(10)  # the lock is awaited while others queue
            items = [*items, *more(lambda item: item[0] == "p")]
        batches.append(items)
        return [f"answer {i[1]}" for i in items]

    group = GroupCommit(decide)
    answers = {}
    leader = threading.Thread(target=lambda: answers.__setitem__("lead", group.submit(("p", "lead"))))
    leader.start()
    assert locking.wait(10)
    followers = []
    for i, item in enumerate([("p", "a"), ("q", "b"), ("p", "c")]):
        t = threading.Thread(target=lambda item=item: answers.__setitem__(item[1], group.submit(item)))
        t.start()
        followers.append(t)
        deadline = time.monotonic() + 10
        while len(group._queue) < i + 1 and time.monotonic() < deadline:
            time.sleep(0.001)
    locked.set()
    for t in [leader, *followers]:
        t.join(10)
    assert batches == [[("p", "lead"), ("p", "a"), ("p", "c")], [("q", "b")]]
    assert answers == {"lead": "answer lead", "a": "answer a", "b": "answer b", "c": "answer c"}
