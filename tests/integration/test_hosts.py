"""The database as several hosts (libpq's multi-host URL, SPEC §14): the service uses the first that answers and
is what is asked (`target_session_attrs=read-write`), its requests and its webhook deliverer alike."""

import time

import pytest
from sqlalchemy.engine import make_url

from ..conftest import SEED_INTENT, free_port, http
from .test_events import Receiver


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
