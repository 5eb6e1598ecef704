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
from selenium.webdriver.common.keys import Keys
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
    # Enough for 30 pages of 24 results: the paging test must see every thumbnail load.
    runtime.ingestor.ingest(ADMIN, list(catalog_items(700, seed=11)))
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
    driver.find_element(By.LINK_TEXT, "Audit log").click()
    audit = driver.find_element(By.ID, "audit").text
    assert "approve" in audit and "user:ops" in audit and "licensed reseller" in audit
    shot(driver, "08-approved-audit")
    payload = app.extensions["sightline"].search.record(ADMIN, str(image_id)).payload
    assert payload["moderation_status"] == "approved"
    driver.get(f"{base}/admin/status")
    assert "images" in driver.find_element(By.ID, "collections").text
    shot(driver, "09-status")


def _all_thumbnails_loaded(driver: WebDriver) -> bool:
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    return bool(
        driver.execute_script(
            "const imgs = Array.from(document.querySelectorAll('#results .tile > a img'));"
            "return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);"
        )
    )


def test_thirty_pages_of_results_load_every_thumbnail(
    browser: WebDriver, server: tuple[str, Flask]
) -> None:
    base, _ = server
    driver = browser
    log_in(driver, base)
    driver.find_element(By.ID, "q").send_keys("a dress")
    driver.find_element(By.ID, "search-button").click()
    seen: set[str] = set()
    for page in range(1, 31):
        wait(driver).until(ec.text_to_be_present_in_element((By.ID, "summary"), f"page {page}"))
        wait(driver, 60).until(_all_thumbnails_loaded)
        tiles = driver.find_elements(By.CSS_SELECTOR, "#results .tile")
        ids = {t.get_attribute("data-image-id") or "" for t in tiles}
        assert len(tiles) == 24 and not ids & seen, page
        seen |= ids
        assert driver.find_elements(By.CSS_SELECTOR, "#results meter")  # score bars
        if page == 1:
            assert int(driver.find_element(By.ID, "total").text) >= 740
            shot(driver, "10-results-page-1")
        if page < 30:
            driver.find_element(By.ID, "next").click()
    assert len(seen) == 720
    shot(driver, "11-results-page-30")


def test_lightbox_and_search_by_image_keeps_its_query(
    browser: WebDriver, server: tuple[str, Flask], tmp_path: Path
) -> None:
    base, _ = server
    driver = browser
    log_in(driver, base)
    first = driver.find_element(By.CSS_SELECTOR, "#results .tile")
    first.find_element(By.CLASS_NAME, "zoom").click()
    box = driver.find_element(By.CSS_SELECTOR, ".lightbox:target img")
    wait(driver).until(lambda d: box.get_attribute("naturalWidth") not in (None, "0"))
    assert box.is_displayed()
    shot(driver, "12-lightbox")
    query = tmp_path / "query.jpg"
    query.write_bytes(next(iter(catalog_items(1, seed=4242))).data)
    driver.get(f"{base}/admin/search")
    driver.find_element(By.ID, "file").send_keys(str(query))
    driver.find_element(By.ID, "search-button").click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "query-image")))
    page1 = [
        t.get_attribute("data-image-id")
        for t in driver.find_elements(By.CSS_SELECTOR, "#results .tile")
    ]
    driver.find_element(By.ID, "next").click()
    wait(driver).until(ec.text_to_be_present_in_element((By.ID, "summary"), "page 2"))
    assert "Images like the uploaded one" in driver.find_element(By.ID, "summary").text
    shown = driver.find_element(By.CSS_SELECTOR, "#query-image img")
    assert int(shown.get_attribute("naturalWidth") or 0) > 0
    page2 = [
        t.get_attribute("data-image-id")
        for t in driver.find_elements(By.CSS_SELECTOR, "#results .tile")
    ]
    assert page2 and not set(page1) & set(page2)
    shot(driver, "13-search-by-image-page-2")


def test_error_pages_confirmations_and_an_expired_form(
    browser: WebDriver, server: tuple[str, Flask]
) -> None:
    base, app = server
    driver = browser
    log_in(driver, base)
    driver.get(f"{base}/admin/images/{'0' * 64}")
    assert "Not found" in driver.find_element(By.TAG_NAME, "h1").text
    assert driver.find_element(By.CSS_SELECTOR, 'nav[aria-label="Dashboard"]')
    shot(driver, "14-error-404")
    driver.find_element(By.ID, "home").click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "results")))
    driver.get(f"{base}/admin/search?page=abc&where=colr%3Dred")
    assert "whole number" in driver.find_element(By.CLASS_NAME, "error").text
    assert "no image has a field 'colr'" in driver.find_element(By.CLASS_NAME, "warning").text
    shot(driver, "15-error-422-and-warning")
    driver.get(f"{base}/admin/search?where=price%3E100000")
    assert "No images match" in driver.find_element(By.ID, "results").text
    shot(driver, "16-empty-results")
    # Delete asks first; a form whose token went stale says so and changes nothing.
    driver.get(f"{base}/admin/search")
    image_id = driver.find_element(By.CSS_SELECTOR, "#results .tile").get_attribute("data-image-id")
    driver.get(f"{base}/admin/images/{image_id}")
    driver.find_element(By.ID, "delete").click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "confirm")))
    shot(driver, "17-confirm-delete")
    driver.execute_script(
        "document.querySelector('#confirm-form [name=csrf_token]').value = 'stale'"
    )
    driver.find_element(By.ID, "confirm").click()
    wait(driver).until(ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), "expired"))
    shot(driver, "18-error-csrf-expired")
    runtime = app.extensions["sightline"]
    assert runtime.search.record(ADMIN, str(image_id))
    driver.find_element(By.ID, "home").click()
    driver.get(f"{base}/admin/images/{image_id}")
    driver.find_element(By.ID, "delete").click()
    driver.find_element(By.ID, "confirm").click()
    wait(driver).until(ec.text_to_be_present_in_element((By.CLASS_NAME, "flash"), "Deleting"))


def test_review_with_the_keyboard(browser: WebDriver, server: tuple[str, Flask]) -> None:
    base, app = server
    runtime = app.extensions["sightline"]
    for payload, category, note in flagged_examples()[1:]:
        runtime.moderation.flagged.add_image(payload, category, "test", threshold=0.99, note=note)
    runtime.ingestor.ingest(ADMIN, flagged_copies()[1:])
    waiting = runtime.moderation.pending(ADMIN)  # 2, or 3 when run without the approve test
    assert waiting >= 2
    driver = browser
    log_in(driver, base)
    driver.get(f"{base}/admin/moderation")
    rows = driver.find_elements(By.CSS_SELECTOR, "#queue tbody tr[data-image-id]")
    assert len(rows) == waiting and "current" in (rows[0].get_attribute("class") or "")
    shot(driver, "19-review-keyboard")
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys("j")
    second = rows[1].get_attribute("data-image-id")
    body.send_keys("a")  # approves the highlighted (second) row
    wait(driver).until(
        ec.text_to_be_present_in_element((By.CLASS_NAME, "flash"), "Approved 1 of 1")
    )
    assert runtime.search.record(ADMIN, str(second)).payload["moderation_status"] == "approved"
    # The queue comes back with the highlight where it was, not on the first row.
    rows = driver.find_elements(By.CSS_SELECTOR, "#queue tbody tr[data-image-id]")
    where = min(1, len(rows) - 1)
    assert "current" in (rows[where].get_attribute("class") or "")
    rejected = rows[where].get_attribute("data-image-id")
    driver.find_element(By.TAG_NAME, "body").send_keys("r")
    reason = wait(driver).until(ec.presence_of_element_located((By.ID, "confirm-reason")))
    shot(driver, "20-confirm-reject")
    assert driver.switch_to.active_element == reason  # type why, then Enter confirms
    reason.send_keys("counterfeit logo", Keys.ENTER)
    wait(driver).until(
        ec.text_to_be_present_in_element((By.CLASS_NAME, "flash"), "Rejected 1 of 1")
    )
    assert runtime.moderation.pending(ADMIN) == waiting - 2
    [event] = runtime.audit.list(5, target=str(rejected), action="image.reject")
    assert event.reason == "counterfeit logo"
    if waiting == 2:
        assert "Nothing to review" in driver.find_element(By.ID, "queue").text
    shot(driver, "21-review-queue-empty")
    driver.find_element(By.LINK_TEXT, "Flagged set").click()
    assert len(driver.find_elements(By.CSS_SELECTOR, "#flagged tbody tr")) == 3
    shot(driver, "22-flagged-set")
    driver.get(f"{base}/admin/moderation/audit?action=image.")
    text = driver.find_element(By.ID, "audit").text
    assert "image.approve" in text and "image.reject" in text and "flag." not in text
    assert driver.find_elements(By.CSS_SELECTOR, "#audit a.target")  # linked image targets
    shot(driver, "23-audit-filtered")


def test_roles_accounts_status_and_api_docs(browser: WebDriver, server: tuple[str, Flask]) -> None:
    base, app = server
    driver = browser
    log_in(driver, base)
    driver.get(f"{base}/admin/accounts")
    driver.find_element(By.ID, "new-username").send_keys("viewer1")
    driver.find_element(By.ID, "new-password").send_keys("viewer-password-1")
    driver.find_element(By.ID, "create-account").click()
    wait(driver).until(ec.text_to_be_present_in_element((By.ID, "accounts"), "viewer1"))
    shot(driver, "24-accounts")
    from web.extension import HISTORY

    history = app.extensions[HISTORY]
    history.sample()
    app.extensions["sightline"].ingestor.ingest(ADMIN, list(catalog_items(5, seed=99)))
    history.sample()
    driver.get(f"{base}/admin/status")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#charts svg")) == 3
    assert driver.find_elements(By.CSS_SELECTOR, "#charts polyline")
    shot(driver, "25-status-charts")
    driver.get(f"{base}/api/docs")
    wait(driver, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, ".opblock")))
    assert len(driver.find_elements(By.CSS_SELECTOR, ".opblock")) > 20
    shot(driver, "26-api-docs")
    driver.get(f"{base}/admin/search")
    driver.find_element(By.CSS_SELECTOR, "form.inline button").click()  # log out
    driver.find_element(By.ID, "username").send_keys("viewer1")
    driver.find_element(By.ID, "password").send_keys("viewer-password-1")
    driver.find_element(By.ID, "login").click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "results")))
    nav = driver.find_element(By.CSS_SELECTOR, 'nav[aria-label="Dashboard"]').text
    assert "Moderation" not in nav and "Upload" not in nav and "Accounts" not in nav
    shot(driver, "27-viewer-search")
    driver.get(f"{base}/admin/moderation")
    assert "Not allowed" in driver.find_element(By.TAG_NAME, "h1").text
    shot(driver, "28-error-403")
    driver.get(f"{base}/admin/account")
    driver.find_element(By.ID, "current").send_keys("viewer-password-1")
    driver.find_element(By.ID, "new").send_keys("viewer-password-2")
    driver.find_element(By.ID, "repeat").send_keys("viewer-password-2")
    driver.find_element(By.ID, "change-password").click()
    wait(driver).until(
        ec.text_to_be_present_in_element((By.CLASS_NAME, "flash"), "Password changed")
    )
    shot(driver, "29-password-changed")


def test_pages_fit_a_phone_screen(browser: WebDriver, server: tuple[str, Flask]) -> None:
    """At 400 px wide no page is wider than the screen (tables scroll inside it), and the
    image page stacks its columns: headings do not overlap, values are not one letter a
    line."""
    base, app = server
    runtime = app.extensions["sightline"]
    driver = browser
    log_in(driver, base)
    driver.set_window_size(400, 900)
    image_id = runtime.search.text(ADMIN, "dress", k=1)[0].image_id
    pages = {
        "30-phone-image": f"/admin/images/{image_id}",
        "31-phone-search": "/admin/search?q=dress",
        "32-phone-review": "/admin/moderation",
        "33-phone-audit": "/admin/moderation/audit",
        "34-phone-status": "/admin/status",
        "35-phone-accounts": "/admin/accounts",
    }
    for name, path in pages.items():
        driver.get(base + path)
        width = driver.execute_script("return document.documentElement.scrollWidth")
        inner = driver.execute_script("return document.documentElement.clientWidth")
        shot(driver, name)
        assert width <= inner, (path, width, inner)  # no sideways scrolling of the page
    driver.get(f"{base}/admin/images/{image_id}")
    meta = driver.find_element(By.ID, "meta-h").rect
    tags = driver.find_element(By.ID, "tags-h").rect
    assert tags["y"] >= meta["y"] + meta["height"]  # stacked, not side by side
    value = driver.find_element(By.CSS_SELECTOR, ".meta dd").rect
    assert value["width"] > 60  # a value reads along a line
    driver.set_window_size(1400, 1100)
