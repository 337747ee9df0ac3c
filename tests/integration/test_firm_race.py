"""A group's limits hold across its portfolios under concurrency: racing clients over several worker processes,
each deciding for another desk of the group, never breach them; without the groups' lock they do."""


import pytest

from ..conftest import SEED_INTENT, http
from .test_guarantees import approvals, race

pytestmark = pytest.mark.slow

DESKS = [f"desk-{i}" for i in range(8)]
LIMIT = 3  # open positions across the group
GROSS = 75_000  # two whole positions of 30,000 and one of 15,000 at most


def group_race(servers, database_url, keys, unsafe):
    env = {"DATABASE_URL": database_url, **({"RPM_TEST_UNSAFE_DISABLE_GROUP_LOCK": "1"} if unsafe else {})}
    server = servers(env, workers=3, threads=6)
    url, admin = server.url, keys["admin"]
    for desk in DESKS:
        assert http("POST", url + "/portfolios", {"portfolio_id": desk, "capital": 100000}, key=admin)[0] == 201
    assert http("POST", url + "/groups", {"group_id": "fx", "limits": {"positions": LIMIT, "gross_exposure": GROSS}},
                key=admin)[0] == 201
    for desk in DESKS:
        assert http("POST", url + "/groups/fx/members", {"portfolio_id": desk}, key=admin)[0] == 200
    assert http("POST", url + "/firm/marks", {"prices": {"EURUSD": 1.1}}, key=admin)[0] == 200
    # each desk alone would be approved 27,272.72 EURUSD (30,000 USD): the group admits two of those and a third of
    # 15,000 (its gross room), and no fourth position
    results = race(url, keys["trader"], [{**SEED_INTENT, "portfolio_id": desk} for desk in DESKS])
    _, view = http("GET", url + "/groups/fx", key=admin)
    server.stop()
    return approvals(results), view


def test_racing_desks_of_one_group_never_breach_its_limits(servers, database_url, keys, capsys):
    approved, view = group_race(servers, database_url, keys, unsafe=False)
    assert approved == LIMIT and view["open_positions"] == LIMIT
    assert view["exposures"]["gross"] <= GROSS + 1e-6
    with capsys.disabled():
        print(f"\n[race group] 8 desks of one group, 3 workers, limits {LIMIT} positions and {GROSS:,} gross: "
              f"{approved} approved, {view['open_positions']} open, gross {view['exposures']['gross']:,.2f}")


def test_the_group_race_breaches_its_limits_without_the_group_lock(servers, admin_engine, template_db, capsys):
    """The same race with the groups read without their lock: the test above can fail."""
    from .conftest import throwaway_database

    worst = None
    for attempt in range(4):
        with throwaway_database(admin_engine, template_db, f"rpm_test_unsafe_group_{attempt}") as (url, keys):
            approved, view = group_race(servers, url, keys, unsafe=True)
        worst = view
        if view["open_positions"] > LIMIT or view["exposures"]["gross"] > GROSS + 1e-6:
            break
    assert worst["open_positions"] > LIMIT or worst["exposures"]["gross"] > GROSS + 1e-6, worst
    with capsys.disabled():
        print(f"\n[race group, lock disabled] {worst['open_positions']} positions open against {LIMIT}, gross "
              f"{worst['exposures']['gross']:,.2f} against {GROSS:,} (attempt {attempt + 1})")


def test_a_firm_halt_survives_kill_9_and_still_lets_reductions_through(servers, database_url, keys, capsys):
    env = {"DATABASE_URL": database_url}
    server = servers(env)
    admin, trader = keys["admin"], keys["trader"]
    assert http("POST", server.url + "/portfolios", {"portfolio_id": "desk-a"}, key=admin)[0] == 201
    assert http("POST", server.url + "/firm/marks", {"prices": {"EURUSD": 1.1, "GBPUSD": 1.25}}, key=trader)[0] == 200
    for pid in ("default", "desk-a"):
        _, d = http("POST", server.url + "/process_trade", {**SEED_INTENT, "portfolio_id": pid}, key=trader)
        assert d["decision"]["status"] == "APPROVED"
    assert http("POST", server.url + "/groups/firm/halt", {"reason": "kill drill"}, key=admin)[0] == 200
    server.kill9()

    again = servers(env)
    gbp = {**SEED_INTENT, "symbol": "GBPUSD", "current_price": 1.25}
    for pid in ("default", "desk-a"):
        _, d = http("POST", again.url + "/process_trade", {**gbp, "portfolio_id": pid}, key=trader)
        assert d["decision"]["reason"] == "HALTED" and d["decision"]["rejected_trade"]["context"]["level"] == "firm"
        _, close = http("POST", again.url + "/process_trade", {**SEED_INTENT, "portfolio_id": pid, "direction": -1},
                        key=trader)
        assert close["decision"]["status"] == "APPROVED" and close["decision"]["approved_trade"]["reducing"]
    _, view = http("GET", again.url + "/firm", key=admin)
    assert view["trading_state"] == "HALTED" and view["switches"]["manual_halt"]["reason"] == "kill drill"
    with capsys.disabled():
        reason = view["switches"]["manual_halt"]["reason"]
        print(f"\n[firm halt restart] after kill -9: firm {view['trading_state']} ({reason}); new risk HALTED in "
              "both portfolios, their closes approved")
