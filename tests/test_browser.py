"""The dashboard in headless Chromium (Debian's chromium + chromium-driver), on real data:
the demo model, a generated catalog tagged with the demo taxonomy, and a quarantined copy
of a flagged photo. Each test saves a screenshot under test-artifacts/screenshots/.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from demo.catalog import DEMO_MODEL, catalog_items, flagged_copies, flagged_examples
from demo.taxonomy import demo_taxonomy
from services.auth.apikeys import SqliteKeyStore
from services.runtime import build_runtime
from services.settings import Settings
from tests.conftest import ADMIN, set_taxonomy
from tests.servers import free_port
from web import create_app

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "screenshots"
PASSWORD = "browser-test-password"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Flask]]:
    data = tmp_path_factory.mktemp("dashboard")
    settings = Settings(data_dir=data, model=str(DEMO_MODEL), batch_size=64)
    runtime = build_runtime(settings, keys=SqliteKeyStore(data / "keys.db"))
    app = create_app(settings, runtime=runtime)
    set_taxonomy(runtime, demo_taxonomy())
    for payload, category, note in flagged_examples()[:1]:
        runtime.moderation.flagged.add_image(payload, category, "test", threshold=0.99, note=note)
    runtime.ingestor.ingest(ADMIN, [*catalog_items(40, seed=3), *flagged_copies()[:1]])
    runtime.access.create_account(ADMIN, "ops", PASSWORD)
    port = free_port()
    http = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", app
    http.shutdown()
    runtime.close()


@pytest.fixture
def browser(server: tuple[str, Flask]) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.implicitly_wait(2)
    yield driver
    driver.quit()


def shot(driver: WebDriver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def wait(driver: WebDriver, timeout: float = 30) -> WebDriverWait:  # type: ignore[type-arg]
    """Poll until a condition holds. A page replaced mid-check (the navigation a click
    started) makes Chromium answer "node does not belong to the document": poll again."""
    return WebDriverWait(
        driver, timeout, ignored_exceptions=(StaleElementReferenceException, WebDriverException)
    )


def log_in(driver: WebDriver, base: str) -> None:
    driver.get(f"{base}/admin/login")
    driver.find_element(By.ID, "username").send_keys("ops")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login").click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "results")))


def test_log_in_and_upload_two_images(
    browser: WebDriver, server: tuple[str, Flask], tmp_path: Path
) -> None:
    base, _ = server
    driver = browser
    driver.get(f"{base}/admin/search")
    assert "/admin/login" in driver.current_url
    shot(driver, "01-login")
    log_in(driver, base)
    driver.get(f"{base}/admin/upload")
    files = []
    for n, item in enumerate(list(catalog_items(2, seed=777))):
        path = tmp_path / f"new-{n}.jpg"
        path.write_bytes(item.data)
        files.append(str(path))
    driver.find_element(By.ID, "files").send_keys("\n".join(files))
    driver.find_element(By.ID, "upload-button").click()
    wait(driver).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, 'td.state[data-state="done"]')) == 2
    )
    rows = driver.find_elements(By.CSS_SELECTOR, "#upload-rows tr")
    assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == ["new-0.jpg", "new-1.jpg"]
    shot(driver, "02-upload-indexed")
    link = rows[0].find_element(By.LINK_TEXT, "view")
    link.click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "main-image")))
    assert "new-0.jpg" in driver.page_source


def test_search_and_open_a_result(browser: WebDriver, server: tuple[str, Flask]) -> None:
    base, _ = server
    driver = browser
    log_in(driver, base)
    shot(driver, "03-browse")
    box = driver.find_element(By.ID, "q")
    box.send_keys("red striped dress")
    driver.find_element(By.ID, "search-button").click()
    wait(driver).until(ec.text_to_be_present_in_element((By.TAG_NAME, "main"), "Results for"))
    tiles = driver.find_elements(By.CSS_SELECTOR, "#results .tile a")
    assert tiles
    shot(driver, "04-search-results")
    alt = tiles[0].find_element(By.TAG_NAME, "img").get_attribute("alt")
    assert alt and alt != "catalog image"  # alt text comes from the tags
    tiles[0].click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "main-image")))
    meters = driver.find_elements(By.TAG_NAME, "meter")
    assert len(meters) >= 3  # score bars for category, colour, pattern
    assert driver.find_elements(By.CSS_SELECTOR, ".strip .tile")  # similar images
    shot(driver, "05-image-page")


def test_edit_a_label_and_preview(browser: WebDriver, server: tuple[str, Flask]) -> None:
    base, _ = server
    driver = browser
    log_in(driver, base)
    driver.get(f"{base}/admin/taxonomy")
    area = driver.find_element(By.ID, "yaml")
    text = area.get_attribute("value") or ""
    assert "name: category" in text
    edited = text.replace("- name: t-shirt", "- name: tee", 1)
    assert edited != text
    area.clear()
    area.send_keys(edited)
    driver.find_element(By.ID, "preview").click()
    table = wait(driver).until(ec.presence_of_element_located((By.ID, "preview-table")))
    assert len(table.find_elements(By.CSS_SELECTOR, "tbody tr")) == 6
    assert "name: tee" in (driver.find_element(By.ID, "yaml").get_attribute("value") or "")
    shot(driver, "06-taxonomy-preview")


def test_approve_a_quarantined_image(browser: WebDriver, server: tuple[str, Flask]) -> None:
    base, app = server
    driver = browser
    log_in(driver, base)
    driver.get(f"{base}/admin/moderation")
    rows = driver.find_elements(By.CSS_SELECTOR, '#queue input[name="image_ids"]')
    assert len(rows) == 1
    image_id = rows[0].get_attribute("value")
    assert driver.find_elements(By.CSS_SELECTOR, "#queue .match img")  # the flagged item beside it
    shot(driver, "07-review-queue")
    rows[0].click()
    driver.find_element(By.ID, "reason").send_keys("licensed reseller")
    driver.find_element(By.ID, "approve").click()
    wait(driver).until(
        ec.text_to_be_present_in_element((By.CLASS_NAME, "flash"), "Approved 1 of 1")
    )
    assert not driver.find_elements(By.CSS_SELECTOR, '#queue input[name="image_ids"]')
    audit = driver.find_element(By.ID, "audit").text
    assert "approve" in audit and "user:ops" in audit and "licensed reseller" in audit
    shot(driver, "08-approved-audit")
    payload = app.extensions["sightline"].search.record(ADMIN, str(image_id)).payload
    assert payload["moderation_status"] == "approved"
    driver.get(f"{base}/admin/status")
    assert "points" in driver.find_element(By.ID, "status").text
    shot(driver, "09-status")
