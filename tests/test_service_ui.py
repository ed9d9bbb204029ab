"""The page at /ui, driven end to end in headless Chromium (Debian's chromium + chromedriver)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import requests

from tests.servicekit import encoded, picture

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-quic", "--disable-dev-shm-usage", "--window-size=1000,900"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """Headless Chromium with a fresh profile; never a downloaded browser or driver."""
    if not (CHROMIUM.exists() and DRIVER.exists()):
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is missing in CI: .ci/run installs it with `make browser`")
        pytest.skip("Chromium is not installed here: `make browser` installs Debian's chromium "
                    "and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Selenium Manager would fetch drivers and send statistics: both paths are given instead.
    os.environ.update(SE_OFFLINE="true", SE_AVOID_STATS="true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 20):
    """Wait for condition(driver) to be truthy and return it."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def shown_labels(driver) -> list[tuple[str, str, str]]:
    """(label, percent text, bar width) of each row the page shows."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#labels .row")
    return [(r.get_attribute("data-label"), r.find_element(By.CSS_SELECTOR, ".pct").text,
             r.find_element(By.CSS_SELECTOR, ".bar").value_of_css_property("width"))
            for r in rows]


def expected_labels(server, path: Path) -> list[tuple[str, str]]:
    """What the API answers for the same file, as the page should print it."""
    with path.open("rb") as handle:
        answer = requests.post(f"{server.url}/classify", files={"image": handle}, timeout=30)
    return [(e["label"], f"{e['probability'] * 100:.1f}%") for e in answer.json()["labels"]]


def test_choosing_an_image_shows_it_with_its_label_bars(classifier_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(f"{classifier_server.url}/ui")
    wait(browser, lambda d: classifier_server.tag in d.find_element(By.ID, "model").text)
    known = tmp_path / "known.png"
    known.write_bytes(encoded(picture(11, (80, 60)), "PNG"))
    browser.find_element(By.ID, "file").send_keys(str(known))
    rows = wait(browser, lambda d: len(shown_labels(d)) == 3 and shown_labels(d))
    assert [(label, pct) for label, pct, _ in rows] == expected_labels(classifier_server, known)
    assert all(width.endswith("px") and float(width[:-2]) > 0 for *_, width in rows)
    preview = browser.find_element(By.ID, "preview")
    assert preview.is_displayed() and browser.execute_script(
        "return arguments[0].naturalWidth", preview) == 80
    # The notice shows exactly when the API calls the answer unsure (the tiny untrained model
    # of the tests is unsure of everything at the default threshold).
    with known.open("rb") as handle:
        unsure = requests.post(f"{classifier_server.url}/classify", files={"image": handle},
                               timeout=30).json()["unsure"]
    assert unsure and browser.find_element(By.ID, "unsure").is_displayed()
    browser.save_screenshot(str(tmp_path / "ui.png"))


def test_dropping_an_image_and_a_bad_file(classifier_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(f"{classifier_server.url}/ui")
    wait(browser, lambda d: classifier_server.tag in d.find_element(By.ID, "model").text)
    dropped = tmp_path / "dropped.jpg"
    dropped.write_bytes(encoded(picture(12, (64, 64))))
    drop = """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], arguments[1], {type: arguments[2]}));
        document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    """
    payload = base64.b64encode(dropped.read_bytes()).decode()
    browser.execute_script(drop, payload, "dropped.jpg", "image/jpeg")
    rows = wait(browser, lambda d: len(shown_labels(d)) == 3 and shown_labels(d))
    assert [(label, pct) for label, pct, _ in rows] == expected_labels(classifier_server, dropped)

    browser.execute_script(drop, base64.b64encode(b"not an image").decode(), "notes.txt",
                           "text/plain")
    error = wait(browser, lambda d: d.find_element(By.ID, "error").text)
    assert "not a JPEG, PNG, WebP, BMP or GIF image" in error
    assert shown_labels(browser) == []


def test_a_wrong_answer_can_be_corrected(classifier_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from model.predictions import read_feedback

    browser.get(f"{classifier_server.url}/ui")
    wait(browser, lambda d: classifier_server.tag in d.find_element(By.ID, "model").text)
    assert not browser.find_element(By.ID, "feedback").is_displayed()  # nothing to correct yet
    image = tmp_path / "wrong.png"
    image.write_bytes(encoded(picture(13, (50, 50)), "PNG"))
    browser.find_element(By.ID, "file").send_keys(str(image))
    rows = wait(browser, lambda d: len(shown_labels(d)) == 3 and shown_labels(d))
    right = next(label for label, *_ in rows[1:])  # not what the model said first
    choice = Select(browser.find_element(By.ID, "correct"))
    assert [o.text for o in choice.options] == ["Circle", "Square", "Triangle"]
    choice.select_by_visible_text(right)
    browser.find_element(By.ID, "send-feedback").click()
    status = wait(browser, lambda d: "stored" in (t := d.find_element(
        By.ID, "feedback-status").text) and t)
    assert status == f"thanks: stored as {right}"
    stored = read_feedback(classifier_server.log.parent / "predictions")
    assert stored.label.tolist()[-1] == right and stored.model.tolist()[-1] == \
        classifier_server.tag


# The page's script run by Node with a stand-in DOM and fetch, where Chromium is missing:
# it sends the chosen file as the request body, with an image type or octet-stream.
NODE_CHECK = r"""
const fs = require("fs");
const html = fs.readFileSync(process.argv[2], "utf8");
const script = html.split("<script>")[1].split("</script>")[0];
const stub = () => ({textContent: "", style: {}, dataset: {}, value: "", src: "",
  classList: {add() {}, remove() {}}, replaceChildren() {}, append() {},
  addEventListener() {}, querySelector: () => stub()});
const elements = {};
globalThis.document = {getElementById: (id) => (elements[id] ??= stub()), createElement: stub};
globalThis.Option = function Option() {};
URL.createObjectURL = () => "blob:preview";
URL.revokeObjectURL = () => {};
const sent = [];
globalThis.fetch = async (url, init) => {
  if (url === "model" || url.startsWith("review?")) {  // the GETs of the page's start
    return {ok: true, status: 200, json: async () => ({tag: "t", classes: [], items: [],
                                                       total: 0, shadow: null})};
  }
  sent.push({url, method: init.method, type: init.headers["Content-Type"],
             body: init.body instanceof File ? init.body.name : typeof init.body});
  return {ok: true, json: async () => ({labels: [{label: "A", probability: 0.9}],
                                        request_id: "r", seconds: 0.01, model: "t"})};
};
eval(script + "\nglobalThis.classify = classify;");
(async () => {
  await classify(new File([new Uint8Array([255, 216, 255])], "a.jpg", {type: "image/jpeg"}));
  await classify(new File(["not an image"], "notes.txt", {type: "text/plain"}));
  await classify(new File(["?"], "unknown", {type: ""}));
  console.log(JSON.stringify({sent, error: elements.error.textContent}));
})();
"""


def test_the_page_sends_the_image_as_the_request_body(tmp_path):
    import json
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("Node is not installed here")
    script = tmp_path / "check.js"
    script.write_text(NODE_CHECK)
    page = Path(__file__).resolve().parent.parent / "service" / "static" / "ui.html"
    done = subprocess.run([node, str(script), str(page)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["sent"] == [
        {"url": "classify", "method": "POST", "type": "image/jpeg", "body": "a.jpg"},
        {"url": "classify", "method": "POST", "type": "application/octet-stream",
         "body": "notes.txt"},
        {"url": "classify", "method": "POST", "type": "application/octet-stream",
         "body": "unknown"}]
    assert result["error"] == ""
