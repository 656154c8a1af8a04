"""The dashboard page in a real headless browser (Debian's chromium and chromedriver, driven
by selenium): it lists a running fleet's models and workers, sees a worker stop, and retries a
dead letter through its button (confirm dialog, token prompt), which a worker then answers;
it unloads a model and loads it back through the models' buttons, and the model answers;
a retry with a wrong token is refused and the entry stays; with Redis stopped the page says so,
keeps its last figures, and recovers when Redis is back;
a model's panel, opened by its address, draws its charts (batch sizes too, when it batches)
and shows its settings and a failed call's error message.

Skipped where chromium or chromedriver is not installed (``.ci/run`` installs them).
``CONVEYOR_SCREENSHOT=path`` saves the page's screenshot there (README's
``docs/dashboard.png``).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
import redis

from conveyor.broker.keys import Keys
from conveyor.broker.wire import MessageType, decode_message
from conveyor.embedded import RedisServer
from tests.e2e.test_dashboard import TOKEN, Dashboard
from tests.e2e.test_dashboard_actions import echo_answers
from tests.e2e.test_dashboard_panel import PANEL, calls
from tests.e2e.test_dlq import MODEL, bury, job_fields, wait_entries
from tests.support.fleet import MODELS, Fleet

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs chromium and chromedriver (apt: chromium-driver)"
)

if CHROMIUM and DRIVER:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,1200"):
        options.add_argument(flag)
    options.add_argument("--disable-dev-shm-usage")  # small /dev/shm in containers
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(DRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: webdriver.Chrome, what: str, check: object, timeout: float = 15) -> object:
    # The page changes on each pushed snapshot: the DOM is polled (no event reaches us here).
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(check, what)  # type: ignore[arg-type]


def _rows(driver: webdriver.Chrome, table: str, rows: str = "tr") -> list[str | int]:
    """The rows' names (a worker's: its pid), read in one script: the page redraws its tables
    on each snapshot, so elements found one call earlier may be gone."""
    script = (
        "return [...document.querySelectorAll(arguments[0])].map(r => r.dataset.worker"
        " ? Number(r.cells[2].textContent) : r.dataset.model || '')"
    )
    return list(driver.execute_script(script, f"#{table} tbody {rows}"))


def _confirm(driver: webdriver.Chrome, token: str) -> None:
    """Accepts an action's confirm dialog, then answers its token prompt with ``token``."""
    _wait(driver, "the confirm dialog", expected_conditions.alert_is_present())
    driver.switch_to.alert.accept()
    _wait(driver, "the token prompt", expected_conditions.alert_is_present())
    prompt = driver.switch_to.alert
    prompt.send_keys(token)
    prompt.accept()


def _panel_charts(driver: webdriver.Chrome) -> list[str]:
    script = "return [...document.querySelectorAll('#model-charts [data-chart]')]"
    script += ".filter(c => c.querySelector('.uplot')).map(c => c.dataset.chart)"
    return list(driver.execute_script(script))


@pytest.mark.timeout(60)
def test_the_page_shows_the_fleet_and_retries_a_dead_letter(
    redis_url: str, prefix: str, fleet: Fleet, probe: redis.Redis, browser: webdriver.Chrome
) -> None:
    keys = Keys(prefix)
    board = Dashboard(redis_url, prefix)
    fleet.workers.append(board)
    workers = [fleet.start(MODELS, wait=False) for _ in range(3)]
    for worker in workers:
        worker.wait_for_log("worker.started")
    job, fields = job_fields(keys, "req-page", span=10.0, age=300.0)
    entry_id = bury(probe, keys, fields)

    browser.get(board.url)
    _wait(browser, "live", lambda d: d.find_element(By.ID, "status").text == "live")
    _wait(browser, "three workers", lambda d: len(_rows(d, "workers")) == 3)
    _wait(browser, "the echo model", lambda d: MODEL in _rows(d, "models"))
    _wait(browser, "its dead letter", lambda d: d.find_elements(
        By.CSS_SELECTOR, f'#dead tr[data-entry="{entry_id}"]'
    ))  # fmt: skip
    for chart in ("backlog", "latency"):  # the fleet's small charts of each model
        drawn = (By.CSS_SELECTOR, f'#charts [data-chart="{MODEL}/{chart}"] .uplot')
        _wait(browser, f"its {chart} chart", expected_conditions.presence_of_element_located(drawn))
    # clicked in one script: the table is redrawn on each snapshot (a found row may be gone)
    browser.execute_script(
        "document.querySelector(arguments[0]).click()", f'#models tr[data-model="{MODEL}"]'
    )
    stream = f'#streams tr[data-stream="{keys.jobs(MODEL)}"]'
    _wait(browser, "its streams", lambda d: d.find_elements(By.CSS_SELECTOR, stream))
    _wait(browser, "its panel's charts", lambda d: len(_panel_charts(d)) == 3)
    implementation = '#model-settings tr[data-key="implementation"]'
    _wait(browser, "its settings", lambda d: d.find_elements(By.CSS_SELECTOR, implementation))
    workers[-1].signal(signal.SIGTERM)
    _wait(browser, "two workers left", lambda d: len(_rows(d, "workers")) == 2)

    # a worker that stops beating (SIGSTOP: alive, silent) stands out, then recovers
    frozen = workers[0]
    frozen.signal(signal.SIGSTOP)
    try:
        _wait(browser, "it late", lambda d: _rows(d, "workers", "tr.late") == [frozen.pid])
    finally:
        frozen.signal(signal.SIGCONT)
    _wait(browser, "none late", lambda d: _rows(d, "workers", "tr.late") == [])

    button = browser.find_element(
        By.CSS_SELECTOR, f'#dead tr[data-entry="{entry_id}"] button[data-action="retry"]'
    )
    button.click()
    _confirm(browser, TOKEN)
    [(_, raw)] = wait_entries(probe, job.reply, 1)
    assert decode_message(raw).type is MessageType.RESULT
    _wait(browser, "done", lambda d: "retry: 1 done" in d.find_element(By.ID, "dead-status").text)
    shot = os.environ.get("CONVEYOR_SCREENSHOT")
    if shot:  # for README: the fleet after a few seconds of history
        # some load for the picture: 400 echo jobs at once, then the calls/s on the page
        with probe.pipeline(transaction=False) as pipe:
            for i in range(400):
                pipe.xadd(keys.jobs(MODEL), dict(job_fields(keys, f"load-{i}")[1]))  # type: ignore[arg-type]
            pipe.execute()
        busy = "#models tr[data-model=echo] td:nth-child(6)"
        _wait(
            browser, "calls/s", lambda d: d.find_element(By.CSS_SELECTOR, busy).text not in "-0.0"
        )
        shown = bury(probe, keys, {"id": "r-shown", "method": "predict"}, reason="bad entry")
        row = f'#dead tr[data-entry="{shown}"]'
        _wait(browser, "the new dead letter", lambda d: d.find_elements(By.CSS_SELECTOR, row))
        browser.execute_script("window.scrollTo(0, 0)")  # the fleet, then the panel below
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(shot)


def _click_later(driver: webdriver.Chrome, selector: str) -> None:
    """Clicks ``selector`` from a timer: the table is redrawn on each snapshot (a found button
    may be gone), and a click that opens a dialog must not block this script."""
    script = "const b = document.querySelector(arguments[0]); setTimeout(() => b.click(), 0)"
    driver.execute_script(script, selector)


def _ready(driver: webdriver.Chrome, pid: int) -> str:
    script = (
        "const r = [...document.querySelectorAll('#workers tbody tr')]"
        ".find(r => Number(r.cells[2].textContent) === arguments[0]);"
        " return r ? r.cells[3].textContent : null"
    )
    return str(driver.execute_script(script, pid))


@pytest.mark.timeout(60)
def test_the_page_unloads_and_loads_a_model(
    redis_url: str, prefix: str, fleet: Fleet, browser: webdriver.Chrome
) -> None:
    worker = fleet.start(MODELS)
    board = Dashboard(redis_url, prefix)
    fleet.workers.append(board)
    browser.get(board.url)
    _wait(browser, "echo served", lambda d: MODEL in _ready(d, worker.pid).split(", "))
    status = (By.ID, "model-action-status")

    _click_later(browser, f'#models tr[data-model="{MODEL}"] button[data-action="unload"]')
    _confirm(browser, TOKEN)
    _wait(browser, "unloaded", lambda d: "unloaded on" in d.find_element(*status).text)
    worker.wait_for_log(f"model.unloaded model={MODEL}")
    _wait(browser, "echo gone", lambda d: MODEL not in _ready(d, worker.pid).split(", "))

    _click_later(browser, f'#models tr[data-model="{MODEL}"] button[data-action="load"]')
    _wait(browser, "the confirm dialog", expected_conditions.alert_is_present())
    browser.switch_to.alert.accept()  # the token is kept for the session: no prompt
    _wait(browser, "loaded", lambda d: "loaded on" in d.find_element(*status).text)
    _wait(browser, "echo back", lambda d: MODEL in _ready(d, worker.pid).split(", "))
    assert echo_answers(redis_url, prefix) == 3.0
    assert not browser.find_element(By.ID, "model").is_displayed()  # no click on the row


@pytest.mark.timeout(60)
def test_a_model_panel_opened_by_its_address(
    redis_url: str, prefix: str, fleet: Fleet, browser: webdriver.Chrome
) -> None:
    fleet.start(PANEL)
    board = Dashboard(redis_url, prefix)
    fleet.workers.append(board)
    browser.get(board.url + "/#model=panel")
    _wait(browser, "live", lambda d: d.find_element(By.ID, "status").text == "live")
    _wait(browser, "the panel", lambda d: d.find_element(By.ID, "model").is_displayed())
    version = '#model-settings tr[data-key="version"] td:nth-child(2)'
    _wait(browser, "its settings", lambda d: d.find_element(By.CSS_SELECTOR, version).text == "v3")
    token = '#model-settings tr[data-key="parameters.extra.api_token"] td:nth-child(2)'
    assert browser.find_element(By.CSS_SELECTOR, token).text == "<redacted>"
    failed_id = anyio.run(calls, redis_url, prefix)
    message = f'#model-errors tr[data-request="{failed_id}"] td.message'
    _wait(browser, "the error", lambda d: d.find_elements(By.CSS_SELECTOR, message), timeout=20)
    assert browser.find_element(By.CSS_SELECTOR, message).text == "negative input: -1"
    _wait(
        browser,
        "four charts, batch sizes among them",
        lambda d: _panel_charts(d) == ["throughput", "latency", "wait-run", "batches"],
    )
    assert "tok-never-shown" not in browser.page_source


@pytest.mark.timeout(60)
def test_the_page_refuses_a_wrong_token_and_rides_out_redis_down(
    redis_server_factory: Callable[..., RedisServer],
    prefix: str,
    fleet: Fleet,
    browser: webdriver.Chrome,
) -> None:
    server = redis_server_factory()
    board = Dashboard(server.url, prefix)
    fleet.workers.append(board)
    keys = Keys(prefix)
    direct = redis.Redis.from_url(server.url)
    try:
        entry_id = bury(direct, keys, {"id": "r-refused", "method": "predict"})
        browser.get(board.url)
        _wait(browser, "live", lambda d: d.find_element(By.ID, "status").text == "live")
        entry = f'#dead tr[data-entry="{entry_id}"]'
        _wait(browser, "the dead letter", lambda d: d.find_elements(By.CSS_SELECTOR, entry))

        # a retry with a wrong token: refused, said on the page, and the entry stays
        _click_later(browser, entry + ' button[data-action="retry"]')
        _confirm(browser, "not-" + TOKEN)
        status = (By.ID, "dead-status")
        _wait(browser, "refused", expected_conditions.text_to_be_present_in_element(
            status, "wrong token"
        ))  # fmt: skip
        assert direct.xlen(keys.dead(MODEL)) == 1
        assert browser.find_elements(By.CSS_SELECTOR, entry)

        # Redis down: the page says so and keeps the last figures; back: live again
        server.stop()
        shown = (By.ID, "error")
        _wait(browser, "Redis down shown", expected_conditions.text_to_be_present_in_element(
            shown, "cannot reach Redis"
        ))  # fmt: skip
        assert MODEL in _rows(browser, "models")  # the last figures read stay
        server.start()  # same port, no persistence: back, its data gone
        _wait(browser, "the error gone", expected_conditions.invisibility_of_element_located(shown))
        _wait(browser, "still live", lambda d: d.find_element(By.ID, "status").text == "live")
    finally:
        direct.close()
