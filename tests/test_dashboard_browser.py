"""The dashboard and the API docs in a real headless Debian Chromium (tests/browser.py), on
the real stack: log in through the form, watch a job's state change on the job list while
it runs (polling, no reload), open its page and check that the input and synthetic
previews load and differ, and that /docs and /redoc render with no network. The pages'
screenshots are saved as test artefacts (var/test-artefacts/dashboard-*.png)."""

from __future__ import annotations

import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from models.dce.phantom_dicom import write_phantom_series
from tests.browser import save_screenshot

pytestmark = pytest.mark.slow

# Per image: loaded, its size, and the spread of its grey values (drawn into a canvas).
IMAGE_STATS = """
return Array.from(document.querySelectorAll('img.preview')).map(function (img) {
  var out = {series: img.dataset.series, row: img.dataset.row, complete: img.complete,
             width: img.naturalWidth, height: img.naturalHeight, std: 0, sum: 0};
  if (!img.complete || !img.naturalWidth) return out;
  var canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  var ctx = canvas.getContext('2d'); ctx.drawImage(img, 0, 0);
  var data = ctx.getImageData(0, 0, canvas.width, canvas.height).data, n = data.length / 4, s = 0, ss = 0;
  for (var i = 0; i < data.length; i += 4) { s += data[i]; ss += data[i] * data[i]; }
  out.sum = s; out.std = Math.sqrt(Math.max(0, ss / n - (s / n) * (s / n)));
  return out;
});
"""
OFF_SITE = """
var here = location.origin;
return performance.getEntriesByType('resource').map(function (e) { return e.name; })
  .filter(function (u) { return u.indexOf(here) !== 0; });
"""


def _log_in(driver, stack) -> None:
    driver.get(stack.url + "/")  # no session: the login form
    WebDriverWait(driver, 30).until(lambda d: "/dashboard/login" in d.current_url)
    driver.find_element(By.NAME, "token").send_keys(stack.token)
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.jobs"))


def _row_status(driver, job_id: str) -> str | None:
    found = driver.find_elements(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]')
    try:
        return found[0].get_attribute("data-status") if found else None
    except Exception:  # replaced by the next poll between find and read
        return None


def test_dashboard_follows_a_running_job_and_shows_its_previews(tmp_path, stack_no_pacs, browser):
    stack = stack_no_pacs
    _log_in(browser, stack)
    browser.execute_script("window.__notReloaded = true;")
    files = write_phantom_series(tmp_path / "t1", seed=941, n_slices=24, size=384)
    job_id = stack.post(files).json()["job_id"]

    seen: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not seen or seen[-1] not in ("done", "failed", "skipped")):
        status = _row_status(browser, job_id)
        if status and (not seen or seen[-1] != status):
            seen.append(status)
        time.sleep(0.1)
    assert seen and seen[-1] == "done", (seen, stack.job(job_id))
    assert len(seen) >= 2, f"the page showed the job only as {seen}: no change seen"
    assert browser.execute_script("return window.__notReloaded === true;")  # it was the polling
    save_screenshot(browser, "dashboard-jobs")

    browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"] a').click()
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.previews"))
    browser.execute_script("document.querySelectorAll('img.preview').forEach(function (i) { i.loading = 'eager'; });")
    WebDriverWait(browser, 120).until(
        lambda d: all(s["complete"] and s["width"] > 0 for s in d.execute_script(IMAGE_STATS)))
    stats = browser.execute_script(IMAGE_STATS)
    by_series = {}
    for s in stats:
        by_series.setdefault(s["series"], []).append(s)
    assert set(by_series) == {"input", "00"} and len(by_series["input"]) == len(by_series["00"]) == 3
    for s in stats:
        assert (s["width"], s["height"]) == (384, 384) and s["std"] > 5, s  # an image, not a blank
    for a, b in zip(by_series["input"], by_series["00"], strict=True):
        assert a["row"] == b["row"] and a["sum"] != b["sum"]  # the synthetic slice is not the input
    timeline = browser.find_element(By.CSS_SELECTOR, "table.timeline").text
    assert all(step in timeline for step in ("received", "classified", "queued", "running", "done"))
    save_screenshot(browser, "dashboard-job")
    browser.execute_script("document.querySelector('table.previews').scrollIntoView();")
    save_screenshot(browser, "dashboard-job-previews")

    browser.find_element(By.LINK_TEXT, "Models").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "article.card"))
    assert "dce_phase1" in browser.find_element(By.TAG_NAME, "main").text
    save_screenshot(browser, "dashboard-models")
    browser.find_element(By.LINK_TEXT, "Health").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "check-workers"))
    assert "queue gpu" in browser.find_element(By.ID, "check-workers").text
    save_screenshot(browser, "dashboard-health")
    assert browser.execute_script(OFF_SITE) == []


def test_docs_render_with_no_network(stack_no_pacs, browser):
    stack = stack_no_pacs
    _log_in(browser, stack)
    browser.get(stack.url + "/docs")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"))
    assert "dicom-synth" in browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    paths = {e.get_attribute("data-path") for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/synthesize", "/jobs/{job_id}"} <= paths
    assert browser.execute_script(OFF_SITE) == []  # everything it loaded came from the gateway
    save_screenshot(browser, "docs-swagger")
    browser.get(stack.url + "/redoc")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "h1"))
    WebDriverWait(browser, 60).until(lambda d: "dicom-synth" in d.find_element(By.TAG_NAME, "body").text)
    assert browser.execute_script(OFF_SITE) == []
    save_screenshot(browser, "docs-redoc")
