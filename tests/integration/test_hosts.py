"""The database as several hosts (libpq's multi-host URL, SPEC §14): the service uses the first that answers and
is what is asked (`target_session_attrs=read-write`), its requests and its webhook deliverer alike; and several
`rpm serve` hosts over one database (`make test-hosts`)."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
from sqlalchemy.engine import make_url

from ..conftest import SEED_INTENT, TcpProxy, free_port, http
from .test_events import Receiver
from .test_firm_race import DESKS, GROSS, LIMIT
from .test_guarantees import FX, approvals, race, setup_portfolio, small

pytestmark = pytest.mark.slow


class Load:
    """A client deciding intents one after another (each with an intent id of its own) until stopped."""

    def __init__(self, url: str, key: str, tag: str = ""):
        self.url, self.key, self.tag = url, key, tag
        self.answers: list[tuple[str, int, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            intent_id = f"load-{self.tag}{n}"
            n += 1
            try:
                status, body = http("POST", self.url + "/process_trade",
                                    {**SEED_INTENT, "atr": 0.05, "intent_id": intent_id}, key=self.key, timeout=30)
            except OSError as exc:
                status, body = 0, {"error": repr(exc)}
            self.answers.append((intent_id, status, body))
            if status != 200:
                time.sleep(0.05)

    def acknowledged(self) -> dict[str, str]:
        """intent id -> decision id of every decision answered."""
        return {i: b["decision"]["id"] for i, s, b in self.answers if s == 200}


def test_a_host_that_does_not_answer_first_in_the_list_is_passed_over(servers, database_url, keys):
    url = make_url(database_url)
    if not url.host or url.query.get("host"):
        pytest.skip("the test database is not reached over TCP at one host")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    listed = (f"postgresql://{url.username}@{dead},{url.host}:{url.port or 5432}/{url.database}"
              "?target_session_attrs=read-write")
    receiver = Receiver()
    try:
        server = servers({"DATABASE_URL": listed, "RPM_WEBHOOK_POLL_S": "0.1"}, workers=1, threads=4)
        status, hook = http("POST", server.url + "/webhooks", {"url": receiver.url}, key=keys["admin"])
        assert status == 201, hook
        status, answer = http("POST", server.url + "/process_trade", SEED_INTENT, key=keys["trader"])
        assert status == 200 and answer["decision"]["status"] == "APPROVED", answer
        assert http("POST", server.url + "/halt", {"reason": "drill"}, key=keys["admin"])[0] == 200
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(receiver.events()) < 2:
            time.sleep(0.1)
        assert [e["type"] for e in receiver.events()] == ["switch_tripped", "halted"]  # the deliverer found it too
    finally:
        receiver.close()


class Hosts:
    """Hosts of their own for `rpm serve` instances: a network namespace each (`ip netns`), joined to this one by a
    veth pair on a private /30 that is made here and removed after; each reaches the database through a forwarder
    on its pair's address here. Where namespaces cannot be made (no privilege), distinct loopback addresses
    (127.0.0.11, 127.0.0.12...) instead, and ``isolated`` says so."""

    def __init__(self, count: int, target: tuple[str, int]):
        self.tag = f"rpm{os.getpid() % 10000}"
        self.made: list[str] = []
        self.proxies: list[TcpProxy] = []
        self.hosts: list[tuple[str, tuple[str, ...], tuple[str, int]]] = []  # (address, prefix, database)
        try:
            for i in range(count):
                self._namespace(i, target)
            self.isolated = True
        except (OSError, subprocess.CalledProcessError):
            self.close()
            self.hosts = [(f"127.0.0.{11 + i}", (), target) for i in range(count)]
            self.isolated = False

    def _namespace(self, i: int, target: tuple[str, int]) -> None:
        name, here, there = f"{self.tag}-{i}", f"{self.tag}h{i}", f"{self.tag}n{i}"
        net = f"10.{200 + os.getpid() % 50}.{i}"
        for command in (f"ip netns add {name}", f"ip link add {here} type veth peer name {there}",
                        f"ip link set {there} netns {name}", f"ip addr add {net}.1/30 dev {here}",
                        f"ip link set {here} up", f"ip netns exec {name} ip addr add {net}.2/30 dev {there}",
                        f"ip netns exec {name} ip link set {there} up", f"ip netns exec {name} ip link set lo up"):
            subprocess.run(command.split(), check=True, capture_output=True)
            if command.startswith("ip netns add"):
                self.made.append(name)
        proxy = TcpProxy(*target, bind=f"{net}.1")
        self.proxies.append(proxy)
        self.hosts.append((f"{net}.2", ("ip", "netns", "exec", name), (f"{net}.1", proxy.port)))

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.close()
        for name in self.made:  # (the veth pair goes with its namespace)
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        self.made, self.proxies = [], []


@pytest.fixture
def three_hosts(servers, database_url):
    url = make_url(database_url)
    hosts = Hosts(3, (url.host or "127.0.0.1", url.port or 5432))
    started = []
    try:
        for address, prefix, (db_host, db_port) in hosts.hosts:
            dsn = url.set(host=db_host, port=db_port).render_as_string(hide_password=False)
            started.append(servers({"DATABASE_URL": dsn, "RPM_CHECKPOINT_EVERY_SECONDS": "0"}, workers=2, threads=6,
                                   host=address, prefix=prefix))
        yield hosts, started
    finally:
        for server in started:
            server.stop()
        hosts.close()


def test_three_hosts_over_one_database_hold_every_limit_survive_a_kill_9_and_share_idempotency(three_hosts, keys,
                                                                                              sql, capsys):
    hosts, (a, b, c) = three_hosts
    urls = [a.url, b.url, c.url]
    setup_portfolio(a.url, keys, {"correlation_size_multiplier": 1.0, "max_net_exposure_pct": 5.0,
                                  "max_currency_exposure_pct": 5.0})
    # a symbol's exposure: 16 intents of AUDUSD at once against 30,000 USD: two whole, a third adjusted to the room
    symbol = approvals(race(urls, keys["trader"], [small("AUDUSD") for _ in range(16)]))
    _, portfolio = http("GET", c.url + "/portfolio", key=keys["trader"])
    exposure = portfolio["exposures"]["symbol"]["AUDUSD"]
    assert symbol == 3 and exposure <= 30_000 + 1e-6
    # positions: 16 symbols at once over the three hosts, a limit of 8 open positions (AUDUSD holds one, and is full)
    positions = approvals(race(urls, keys["trader"], [small(s) for s in FX]))
    _, portfolio = http("GET", b.url + "/portfolio", key=keys["trader"])
    assert positions == 7 and portfolio["open_positions"] == 8
    # a group's limits over its desks, each desk's intent sent to another host
    admin = keys["admin"]
    for desk in DESKS:
        assert http("POST", c.url + "/portfolios", {"portfolio_id": desk, "capital": 100000}, key=admin)[0] == 201
    assert http("POST", a.url + "/groups", {"group_id": "fx", "limits": {"positions": LIMIT, "gross_exposure": GROSS}},
                key=admin)[0] == 201
    for desk in DESKS:
        assert http("POST", b.url + "/groups/fx/members", {"portfolio_id": desk}, key=admin)[0] == 200
    assert http("POST", c.url + "/firm/marks", {"prices": {"EURUSD": 1.1}}, key=admin)[0] == 200
    grouped = approvals(race(urls, keys["trader"], [{**SEED_INTENT, "portfolio_id": desk} for desk in DESKS]))
    _, view = http("GET", a.url + "/groups/fx", key=admin)
    assert grouped == LIMIT and view["open_positions"] == LIMIT and view["exposures"]["gross"] <= GROSS + 1e-6
    # one intent retried at every host at once: one decision, the others its replays
    retried = race(urls, keys["trader"], [{**SEED_INTENT, "portfolio_id": "desk-0", "intent_id": "x-host"}] * 12)
    assert {b_["decision"]["id"] for _, b_ in retried} and len({b_["decision"]["id"] for _, b_ in retried}) == 1
    assert sql("SELECT count(*) FROM decisions WHERE intent_id = 'x-host'")[0][0] == 1
    # kill -9 of one host mid-load: the others go on deciding, no acknowledged decision is lost
    loads = [Load(url, keys["trader"], f"h{n}") for n, url in enumerate(urls)]
    for load in loads:
        load.start()
    time.sleep(1.5)
    a.kill9()
    killed_at = [len(load.answers) for load in loads]
    time.sleep(1.5)
    for load in loads:
        load.stop()
    acknowledged = {i: d for load in loads for i, d in load.acknowledged().items()}
    stored = dict(sql("SELECT intent_id, id FROM decisions WHERE intent_id LIKE 'load-%'"))
    assert acknowledged and all(stored.get(i) == d for i, d in acknowledged.items())
    assert all(s == 200 for load in loads[1:] for _, s, _ in load.answers), "a surviving host failed a request"
    after = [sum(s == 200 for _, s, _ in load.answers[k:]) for load, k in zip(loads, killed_at, strict=True)]
    assert after[0] == 0 and min(after[1:]) > 0
    # a retry of a decision the killed host made, sent to another host, is answered with it
    intent_id, decision_id = next(iter(loads[0].acknowledged().items()))
    status, body = http("POST", b.url + "/process_trade", {**SEED_INTENT, "atr": 0.05, "intent_id": intent_id},
                        key=keys["trader"])
    assert status == 200 and body["decision"]["id"] == decision_id and body["decision"]["replay"]
    with capsys.disabled():
        print(f"\n[three hosts, {'network namespaces' if hosts.isolated else 'loopback addresses (no namespaces)'}] "
              f"AUDUSD {symbol} approved ({exposure:,.2f} <= 30,000), positions {portfolio['open_positions']}/8, group "
              f"{grouped}/{LIMIT}, 12 retries over 3 hosts: 1 decision; kill -9 of "
              f"one host: {len(acknowledged)} acknowledged all stored, the other two decided {after[1]} and "
              f"{after[2]} more")
