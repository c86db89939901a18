"""vse-serve as a person uses it, in a real headless Chromium driven by Selenium.

Debian's ``chromium`` with ``chromium-driver`` (no browser download; Selenium
Manager is never asked). The server is ``python -m trainers.vse_serve`` in a
process of its own (the ``server`` fixture).
"""

from __future__ import annotations

import shutil
import urllib.parse

import pytest

from tests import testing_utils

pytestmark = pytest.mark.slow(
    reason="starts vse-serve and a headless Chromium (seconds each step)"
)

webdriver = pytest.importorskip(
    "selenium.webdriver", reason='Selenium missing: pip install "vse_tf[test]"'
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

K = 12
_ALL_IMAGES_LOADED = """
const images = Array.from(document.querySelectorAll('#results img'));
return images.length > 0 && images.every((i) => i.complete && i.naturalWidth > 0);
"""


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = testing_utils.browser(), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip(
            "no Chromium with its driver: apt-get install -y chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=driver_path)
    )
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait_for(browser, state="done", timeout=60):
    WebDriverWait(browser, timeout).until(
        lambda d: (
            d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == state
        )
    )


def _wait_for_images(browser):
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(_ALL_IMAGES_LOADED))


def _results(browser):
    return [
        (int(f.get_attribute("data-id")), f.text)
        for f in browser.find_elements(By.CSS_SELECTOR, "#results figure.result")
    ]


def test_type_a_sentence_and_see_thumbnails_then_reload(browser, server, tmp_path):
    url, _ = server
    browser.get(url + "/")
    box = browser.find_element(By.ID, "q")
    box.send_keys("a red square", Keys.ENTER)
    _wait_for(browser)
    _wait_for_images(browser)
    results = _results(browser)
    assert len(results) == K
    assert [text.split()[0] for _, text in results] == [f"#{r}" for r in range(1, 13)]
    query = urllib.parse.urlparse(browser.current_url).query
    assert urllib.parse.parse_qs(query) == {"q": ["a red square"]}
    browser.save_screenshot(str(tmp_path / "text.png"))
    assert (tmp_path / "text.png").stat().st_size > 10_000
    # The URL is the search: a reload shows the same results.
    browser.refresh()
    _wait_for(browser)
    _wait_for_images(browser)
    assert _results(browser) == results
    assert browser.find_element(By.ID, "q").get_attribute("value") == "a red square"


def test_a_shared_url_and_a_click_on_a_result(browser, server, served):
    url, _ = server
    browser.get(url + "/?q=" + urllib.parse.quote("a blue circle"))
    _wait_for(browser)
    _wait_for_images(browser)
    second_id = _results(browser)[1][0]
    link = browser.find_elements(By.CSS_SELECTOR, "#results figure.result a")[1]
    link.click()
    WebDriverWait(browser, 30).until(
        lambda d: (
            f"id={second_id}" in d.current_url
            and d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
            == "done"
        )
    )
    _wait_for_images(browser)
    results = _results(browser)
    # Searching by a picture finds that picture first, at cosine 1.
    first_score = float(results[0][1].split()[1])
    assert first_score == pytest.approx(1.0, abs=2e-3)
    shown = browser.find_element(By.ID, "query-thumb")
    assert shown.get_attribute("src").endswith(f"/thumbnail/{second_id}")
    # Back goes to the sentence search.
    browser.back()
    _wait_for(browser)
    assert "q=a%20blue%20circle" in browser.current_url


def test_upload_a_photo_and_see_results_and_captions(browser, server, served):
    url, _ = server
    browser.get(url + "/")
    upload = browser.find_element(By.ID, "file")
    upload.send_keys(served["items"][7])
    _wait_for(browser)
    _wait_for_images(browser)
    results = _results(browser)
    assert len(results) == K
    assert float(results[0][1].split()[1]) == pytest.approx(1.0, abs=2e-3)
    captions = browser.find_elements(By.CSS_SELECTOR, "#captions li.caption")
    assert len(captions) == K
    assert browser.find_element(By.ID, "captions").is_displayed()
    texts = [c.text.split(" ", 1)[1] for c in captions]
    assert all(text in served["caption_texts"] for text in texts)
    assert (
        browser.find_element(By.ID, "query-thumb")
        .get_attribute("src")
        .startswith("blob:")
    )


def test_a_bad_upload_shows_one_sentence(browser, server, tmp_path):
    url, _ = server
    bad = tmp_path / "notes.jpg"
    bad.write_text("these are notes, not a photo\n")
    browser.get(url + "/")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    _wait_for(browser, "error")
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed()
    assert error.text.startswith("the upload is no usable image: not a JPEG")
    assert _results(browser) == []
    # The page and the server go on: a sentence search works after it.
    box = browser.find_element(By.ID, "q")
    box.send_keys("a dog", Keys.ENTER)
    _wait_for(browser)
    assert len(_results(browser)) == K
    assert not browser.find_element(By.ID, "error").is_displayed()
