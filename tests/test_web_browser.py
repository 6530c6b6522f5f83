"""The dashboard in a real browser: headless Chromium (the Debian packages ``chromium`` and
``chromium-driver``, which scripts/setup installs) driven by Selenium against a real
``weightvault ui`` process on a repository with a real (tiny) fine-tuning run.

It checks what a person would look at (the RPO colours, one chart point per checkpoint, the
tensors a diff lists, a restore started from the page and followed live to its end), that the
page needs its session, and that the browser reports no Content-Security-Policy violation (the
live progress runs from the shipped script). Screenshots of each page go to
``$WEIGHTVAULT_SCREENSHOTS`` (docs/dashboard/ holds the committed ones), else to the test's
temporary directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import tree_digest
from webworld import World, build_world
from weightvault.testing.dashboard import Dashboard, dashboard


def _browser() -> webdriver.Chrome:
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:  # the project's setup installs them: their absence is a failure
        pytest.fail("headless Chromium is not installed: run scripts/setup (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--disable-gpu", "--no-first-run"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(driver))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("webb"))


@pytest.fixture(scope="module")
def ui(world: World) -> Iterator[Dashboard]:
    later = (world.t0 + timedelta(minutes=50)).isoformat()
    with dashboard(["ui", "--policy", str(world.policy), "--now", later], world.env, world.root) as d:
        yield d


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    b = _browser()
    try:
        yield b
    finally:
        b.quit()


def _shots(world: World) -> Path:
    where = Path(os.environ.get("WEIGHTVAULT_SCREENSHOTS") or world.root / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


def _csp_violations(browser: webdriver.Chrome) -> list[str]:
    logs = browser.get_log("browser")  # type: ignore[no-untyped-call]
    return [e["message"] for e in logs if "Content Security Policy" in e["message"]
            or "Refused to" in e["message"]]


def _loaded(browser: webdriver.Chrome, title: str) -> None:
    """Wait until the page titled ``title…`` has loaded. chromedriver can return from get() or a
    click before the new document is committed when the machine is busy (the CI's 2 loaded cores
    showed an empty page source, and a title read as "" just after a redirect), so each step waits
    for the page it expects; one that never comes fails after 30 s."""
    WebDriverWait(browser, 30).until(
        lambda b: b.execute_script("return document.readyState") == "complete" and b.title.startswith(title),
        message=f"no page titled {title!r} loaded (at {browser.current_url}: {browser.title!r})")


def test_a_person_checks_recoverability_reads_a_diff_and_restores_from_the_page(
        ui: Dashboard, browser: webdriver.Chrome, world: World) -> None:
    shots = _shots(world)
    browser.get(ui.base + "/")
    _loaded(browser, "Refused")
    assert "no session" in browser.page_source  # no token, no cookie: refused
    browser.get(ui.url)  # the link: token for a cookie, then the overview
    _loaded(browser, "Overview")
    colours = {row.get_attribute("data-source"): row.get_attribute("class")
               for row in browser.find_elements(By.CSS_SELECTOR, "table.rpo tr[data-source]")}
    assert colours == {"fresh": "state-green", "aging": "state-amber", "late": "state-red"}
    browser.save_screenshot(str(shots / "overview.png"))

    browser.find_element(By.LINK_TEXT, "Runs").click()
    _loaded(browser, "Runs")
    run = browser.find_element(By.CSS_SELECTOR, 'section[data-run="tiny"]')
    points = run.find_elements(By.CSS_SELECTOR, 'svg.chart circle.point[data-series="loss"]')
    assert len(points) == len(world.snaps) == 5
    browser.save_screenshot(str(shots / "runs.png"))

    run.find_elements(By.LINK_TEXT, "diff vs previous")[0].click()
    _loaded(browser, "Diff ")
    row = browser.find_element(By.XPATH, "//tr[td[contains(., 'checkpoint-4/model.safetensors')]]")
    changed = {li.text.split()[0] for li in row.find_elements(By.CSS_SELECTOR, "li.tensor")}
    assert "2.weight" in changed and "0.weight" not in changed
    browser.save_screenshot(str(shots / "diff.png"))

    snap = world.snaps[-1]
    browser.get(f"{ui.base}/snapshots/main/{snap.id}/file?path=checkpoint-10/model.safetensors")
    _loaded(browser, "model.safetensors")
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.tensors tbody tr")) == 4
    browser.save_screenshot(str(shots / "tensors.png"))

    browser.get(f"{ui.base}/snapshots/main/{snap.id}?path=checkpoint-10")
    _loaded(browser, f"Snapshot {snap.short_id}")
    names = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "table.tree tbody tr td:first-child")]
    assert names == ["model.safetensors", "optimizer.pt", "trainer_state.json"]
    browser.save_screenshot(str(shots / "snapshot.png"))
    browser.find_element(By.LINK_TEXT, "Restore…").click()
    _loaded(browser, "Restore — confirm")
    target = world.root / "from-the-browser"
    browser.find_element(By.NAME, "target").send_keys(str(target))
    browser.find_element(By.ID, "confirm").click()
    WebDriverWait(browser, 120).until(lambda b: b.find_element(By.ID, "job-state").text in ("ok", "failed"))
    assert browser.find_element(By.ID, "job-state").text == "ok", browser.find_element(By.ID, "job-result").text
    assert "restored 3 files" in browser.find_element(By.ID, "job-result").text
    assert '"op": "restore"' in browser.find_element(By.ID, "job-record").text
    browser.save_screenshot(str(shots / "restore.png"))
    assert tree_digest(target / "checkpoint-10") == tree_digest(world.run / "checkpoint-10")

    browser.get(ui.base + "/storage")
    _loaded(browser, "Storage")
    browser.save_screenshot(str(shots / "storage.png"))
    browser.get(ui.base + "/activity")
    _loaded(browser, "Activity")
    assert "restore" in browser.page_source
    browser.save_screenshot(str(shots / "activity.png"))
    assert _csp_violations(browser) == []

    browser.delete_all_cookies()
    browser.get(ui.base + "/runs")
    _loaded(browser, "Refused")
    assert "no session" in browser.page_source
    browser.get(ui.url)  # the token was spent by the first visit
    _loaded(browser, "Refused")
    assert "not valid" in browser.page_source
