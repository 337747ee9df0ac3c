"""The risk console in a real headless Chromium, against a real `rpm serve` on PostgreSQL.

Screenshots go to RPM_SCREENSHOT_DIR (default: test-artifacts/).
"""

import os
import shutil
import time
from pathlib import Path

import pytest

from ..conftest import ROOT, SEED_INTENT, http

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SHOTS = Path(os.environ.get("RPM_SCREENSHOT_DIR", ROOT / "test-artifacts"))


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # the page is re-rendered (each event, each change): elements come and go
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting ({last})")


def sign_in(driver, url, key):
    from selenium.webdriver.common.by import By

    driver.get(url + "/console")
    wait_for(lambda: driver.find_element(By.ID, "key").is_displayed())
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.ID, "signin-button").click()
    wait_for(lambda: "trading" in driver.find_element(By.ID, "banner").text.lower()
             or "halted" in driver.find_element(By.ID, "banner").text.lower())


def text_of(driver, element_id):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def test_console_drawdown_halt_audit_resume_and_what_a_compliance_key_sees(browser, servers, database_url, keys):
    from selenium.webdriver.common.by import By

    server = servers({"DATABASE_URL": database_url}, workers=2, threads=4)
    trader = keys["trader"]
    http("POST", server.url + "/marks", {"prices": {"EURUSD": 1.1, "GBPUSD": 1.25}}, key=trader)
    http("POST", server.url + "/process_trade", SEED_INTENT, key=trader)
    http("POST", server.url + "/process_trade", {**SEED_INTENT, "symbol": "GBPUSD", "current_price": 1.25,
                                                 "confidence_score": 0.3}, key=trader)
    http("POST", server.url + "/process_trade", {**SEED_INTENT, "symbol": "GBPUSD", "current_price": 1.25,
                                                 "atr": 0.004}, key=trader)
    for price in (1.102, 1.105, 1.101, 1.104):
        http("POST", server.url + "/marks", {"prices": {"EURUSD": price}}, key=trader)

    # sign in as the risk officer (admin): the portfolio is trading
    sign_in(browser, server.url, keys["admin"])
    wait_for(lambda: "ACTIVE" in text_of(browser, "banner") and "EURUSD" in text_of(browser, "positions"))
    wait_for(lambda: "APPROVED" in text_of(browser, "decisions"))
    browser.save_screenshot(str(SHOTS / "console-normal.png"))

    # marks take equity 11% down: the drawdown switch trips and the console shows it
    http("POST", server.url + "/marks", {"prices": {"EURUSD": 0.6966}}, key=trader)
    wait_for(lambda: "HALTED" in text_of(browser, "banner"))

    def drawdown_tripped():  # (read again whole if the page re-renders the table meanwhile)
        cells = browser.find_element(By.CSS_SELECTOR, 'tr[data-switch="drawdown"]').find_elements(By.TAG_NAME, "td")
        return cells[1].text == "TRIPPED" and float(cells[2].text.rstrip("%")) > 10 and cells[3].text == "10.00%"

    wait_for(drawdown_tripped)

    # halt with a reason (confirmed), and see it among the audit events
    browser.find_element(By.ID, "halt-reason").send_keys("desk review after the drawdown")
    browser.find_element(By.ID, "halt").click()
    wait_for(lambda: browser.switch_to.alert is not None)
    assert "Halt trading on default" in browser.switch_to.alert.text
    browser.switch_to.alert.accept()
    wait_for(lambda: "desk review after the drawdown" in text_of(browser, "events"))
    wait_for(lambda: "manual_halt" in text_of(browser, "banner"))
    browser.save_screenshot(str(SHOTS / "console-halted.png"))

    # one decision's breakdown
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#decisions a[data-id]").click() is None)
    wait_for(lambda: "breakdown" in text_of(browser, "detail"))
    browser.save_screenshot(str(SHOTS / "console-decision.png"))

    # resume: refused during the drawdown cooldown, then forced with a reason
    browser.find_element(By.ID, "resume-reason").send_keys("CRO accepts the loss")
    browser.find_element(By.ID, "resume").click()
    wait_for(lambda: browser.switch_to.alert is not None)
    browser.switch_to.alert.accept()  # "Resume trading on default?"
    wait_for(lambda: "Force the resume" in browser.switch_to.alert.text)
    browser.switch_to.alert.accept()
    wait_for(lambda: "ACTIVE" in text_of(browser, "banner"))
    status, events = http("GET", server.url + "/audit/events?kind=admin_action", key=keys["compliance"])
    assert [e["action"] for e in events["events"]] == ["halt", "resume"]
    assert events["events"][1]["after"]["forced"] is True and events["events"][1]["reason"] == "CRO accepts the loss"

    # a compliance key is not offered halt or resume
    browser.find_element(By.ID, "signout").click()
    sign_in(browser, server.url, keys["compliance"])
    wait_for(lambda: "ACTIVE" in text_of(browser, "banner"))
    assert browser.find_elements(By.ID, "halt") == [] and browser.find_elements(By.ID, "resume") == []
    assert "(compliance)" in text_of(browser, "who")

    # the latest decisions are the newest, whatever the history's length (the first page of 1,000 was shown)
    batch = [{**SEED_INTENT, "confidence_score": 0.3, "intent_id": f"late-{i}"} for i in range(1000)]
    status, answer = http("POST", server.url + "/process_trades", {"intents": batch}, key=trader)
    newest = max(d["seq"] for d in answer["decisions"])
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#decisions a[data-id]").text == str(newest))

    # a refused key says why
    browser.find_element(By.ID, "signout").click()
    wait_for(lambda: browser.find_element(By.ID, "key").is_displayed())
    browser.find_element(By.ID, "key").send_keys("rpm_00000000_" + "A" * 43)
    browser.find_element(By.ID, "signin-button").click()
    wait_for(lambda: "Key refused (401): unknown API key" in text_of(browser, "signin-error"))


def test_console_firm_tree_shows_groups_and_halts_a_group(browser, servers, database_url, keys):
    """An admin key not limited to portfolios sees the firm, its groups and their portfolios, with each level's
    equity and limits used; halting a group from the tree halts its portfolios' new risk."""
    from selenium.webdriver.common.by import By

    server = servers({"DATABASE_URL": database_url}, workers=2, threads=4)
    admin, trader = keys["admin"], keys["trader"]
    for desk in ("desk-a", "desk-b"):
        assert http("POST", server.url + "/portfolios", {"portfolio_id": desk, "capital": 100000}, key=admin)[0] == 201
    assert http("POST", server.url + "/groups", {"group_id": "fx", "limits": {"gross_exposure": 50000}},
                key=admin)[0] == 201
    for desk in ("desk-a", "desk-b"):
        assert http("POST", server.url + "/groups/fx/members", {"portfolio_id": desk}, key=admin)[0] == 200
    http("POST", server.url + "/firm/marks", {"prices": {"EURUSD": 1.1}}, key=trader)
    for desk in ("desk-a", "desk-b"):
        http("POST", server.url + "/process_trade", {**SEED_INTENT, "portfolio_id": desk}, key=trader)

    sign_in(browser, server.url, admin)
    wait_for(lambda: "Group fx" in text_of(browser, "tree") and "desk-b" in text_of(browser, "tree"))
    wait_for(lambda: "gross_exposure 100%" in text_of(browser, "tree"))
    browser.save_screenshot(str(SHOTS / "console-firm-tree.png"))
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, 'button[data-halt="fx"]').click() is None)
    wait_for(lambda: browser.switch_to.alert is not None)
    assert "Halt group fx" in browser.switch_to.alert.text
    browser.switch_to.alert.send_keys("desk review")
    browser.switch_to.alert.accept()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, 'button[data-resume="fx"]'))
    _, d = http("POST", server.url + "/process_trade", {**SEED_INTENT, "portfolio_id": "desk-a", "symbol": "GBPUSD",
                                                        "current_price": 1.25}, key=trader)
    assert d["decision"]["reason"] == "HALTED" and d["decision"]["rejected_trade"]["context"]["level"] == "fx"
    browser.save_screenshot(str(SHOTS / "console-firm-halted.png"))

    # a key limited to portfolios is not shown the firm
    assert http("POST", server.url + "/portfolios", {"portfolio_id": "elsewhere"}, key=admin)[0] == 201
    browser.find_element(By.ID, "signout").click()
    sign_in(browser, server.url, keys["trader_elsewhere"])
    assert not browser.find_element(By.ID, "firm-section").is_displayed()


def test_console_shows_a_halt_and_new_decisions_from_the_event_stream_within_a_second(browser, servers, database_url,
                                                                                      keys):
    """The console reads the risk-event stream (GET /events): a mark that trips the drawdown switch shows as HALTED
    within a second of the mark's answer, and a new decision shows in the list, without a reload (its safety poll is
    every 30 s: what shows this fast came on the stream)."""
    from selenium.webdriver.common.by import By

    server = servers({"DATABASE_URL": database_url}, workers=2, threads=4)
    trader = keys["trader"]
    http("POST", server.url + "/marks", {"prices": {"EURUSD": 1.1}}, key=trader)
    status, answer = http("POST", server.url + "/process_trade", SEED_INTENT, key=trader)
    assert status == 200 and answer["decision"]["status"] == "APPROVED", answer

    sign_in(browser, server.url, keys["admin"])
    wait_for(lambda: "ACTIVE" in text_of(browser, "banner") and "EURUSD" in text_of(browser, "positions"))
    wait_for(lambda: "APPROVED" in text_of(browser, "decisions"))
    wait_for(lambda: text_of(browser, "live") == "live")
    browser.execute_script("window.rpmNotReloaded = true")

    def soon(predicate, timeout=5.0):
        """Seconds from now until ``predicate`` holds, polling the page every 20 ms."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                if predicate():
                    return time.monotonic() - start
            except Exception:  # the page re-renders: elements come and go
                pass
            time.sleep(0.02)
        raise AssertionError(f"not shown within {timeout} s")

    def tripped(switch):
        cells = browser.find_element(By.CSS_SELECTOR, f'tr[data-switch="{switch}"]').find_elements(By.TAG_NAME, "td")
        return cells[1].text == "TRIPPED"

    # the mark trips the drawdown and daily-loss switches and halts the portfolio: shown within a second
    status, answer = http("POST", server.url + "/marks", {"prices": {"EURUSD": 0.7}}, key=trader)
    assert status == 200 and "drawdown" in answer["tripped"], answer
    elapsed = soon(lambda: "HALTED" in text_of(browser, "banner") and tripped("drawdown"))
    print(f"mark answered -> HALTED shown: {elapsed:.3f} s")
    assert elapsed < 1.0
    assert "drawdown" in text_of(browser, "banner")
    browser.save_screenshot(str(SHOTS / "console-live-halt.png"))

    # the trader's next intent is refused (the portfolio is halted): the decision shows at the top of the list
    status, answer = http("POST", server.url + "/process_trade", {**SEED_INTENT, "symbol": "GBPUSD",
                                                                  "current_price": 1.25}, key=trader)
    assert status == 200 and answer["decision"]["reason"] == "HALTED", answer
    seq = answer["decision"]["seq"]
    elapsed = soon(lambda: browser.find_element(By.CSS_SELECTOR, "#decisions a[data-id]").text == str(seq))
    print(f"decision answered -> shown in the list: {elapsed:.3f} s")
    assert elapsed < 1.0
    first = browser.find_element(By.CSS_SELECTOR, "#decisions tbody tr").text
    assert "GBPUSD" in first and "REJECTED" in first and "HALTED" in first
    assert text_of(browser, "live") == "live"
    assert browser.execute_script("return window.rpmNotReloaded") is True
