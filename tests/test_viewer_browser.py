"""The radiologist's look (issue 18): OHIF, fetched from npm as `make viewer` fetches it,
served by the gateway at /viewer/ on the real stack, opened in a real headless Chromium.
After a breast T1 series is STOWed and synthesized, the study shows the synthetic series
beside its source in OHIF's study panel, both render (pixels on screen, not blank), and
the screen shows SYNTHETIC in the synthetic series' description. The browser logs in
through the dashboard's form, as a person would; its session cookie is all it sends."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By

from models.dce.phantom_dicom import write_phantom_series
from service.viewer.fetch import ViewerFetchError, ensure_dist
from tests.browser import save_screenshot
from tests.stack import ServiceStack, start_stack

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
VIEWER_DIR = REPO / "var" / "viewer"  # the fetch's cache, as `make viewer` fills it (not in git)
RENDER_TIMEOUT = 240


@pytest.fixture(scope="module")
def ohif_dist() -> Path:
    try:
        return ensure_dist(VIEWER_DIR)
    except ViewerFetchError as exc:
        pytest.fail(f"the OHIF viewer could not be fetched from npm, so it cannot be tested: {exc}")


@pytest.fixture
def viewer_stack(tmp_path, redis_server, job_db_url, ohif_dist):
    stack = start_stack(tmp_path / "svc", broker_url=redis_server.url, database_url=job_db_url,
                        env={"SYNTH_VIEWER_DIR": str(VIEWER_DIR)})
    yield stack
    stack.stop()


def _synthesize(stack: ServiceStack, tmp_path: Path) -> tuple[str, str, str, str]:
    """STOW a breast T1 phantom; wait for its job; the study, the patient, the source's and
    the synthetic series' descriptions."""
    sources = [dcmread(f) for f in write_phantom_series(tmp_path / "t1", seed=911, n_slices=6, size=384)]
    study = sources[0].StudyInstanceUID
    web = DICOMwebClient(url=f"{stack.url}/dicomweb", headers={"Authorization": f"Bearer {stack.token}"})
    web.store_instances(sources, study_instance_uid=study)
    (job,) = stack.jobs()
    job = stack.wait_job(job["job_id"])
    assert job["status"] == "done", job
    descriptions = [s["0008103E"]["Value"][0] for s in web.search_for_series(study)]
    (synthetic,) = [d for d in descriptions if d.startswith("SYNTHETIC")]
    return study, str(sources[0].PatientID), str(sources[0].SeriesDescription), synthetic


def _log_in(driver, stack: ServiceStack, target: str) -> None:
    driver.get(stack.url + target)
    assert "/dashboard/login" in driver.current_url, driver.current_url  # no cookie yet: the form
    driver.find_element(By.NAME, "token").send_keys(stack.token)
    driver.find_element(By.CSS_SELECTOR, "form.login [type=submit]").click()


def _pixels(element) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("L"), dtype=float)


def _viewports(driver, descriptions: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Each description's viewport as on screen, once every one shows an image; else None."""
    shown = {}
    try:
        for pane in driver.find_elements(By.CSS_SELECTOR, '[data-cy="viewport-pane"]'):
            canvases = pane.find_elements(By.CSS_SELECTOR, "canvas.cornerstone-canvas")
            for description in descriptions:
                if description in pane.text and canvases:
                    pixels = _pixels(canvases[0])
                    if pixels.std() > 10:
                        shown[description] = pixels
    except StaleElementReferenceException:
        return None
    return shown if set(shown) == set(descriptions) else None


def _skip_tour(driver, wait: float = 0) -> None:
    """Close OHIF's first-visit tour (it covers a viewport), waiting up to `wait` s for it."""
    deadline = time.monotonic() + wait
    while True:
        skip = driver.find_elements(By.XPATH, "//*[normalize-space(text())='Skip all']")
        if skip:
            skip[0].click()
            time.sleep(0.5)
            return
        if time.monotonic() >= deadline:
            return
        time.sleep(0.5)


def test_ohif_shows_the_synthetic_series_beside_its_source(tmp_path, viewer_stack, browser) -> None:
    stack = viewer_stack
    study, patient_id, source, synthetic = _synthesize(stack, tmp_path)

    # The study in OHIF's viewer, a grid of its series (source and synthetic side by side).
    _log_in(browser, stack, f"/viewer/viewer?StudyInstanceUIDs={study}&hangingprotocolId=@ohif/mnGrid")
    deadline = time.monotonic() + RENDER_TIMEOUT
    shown = None
    while shown is None and time.monotonic() < deadline:
        time.sleep(1)
        _skip_tour(browser)
        shown = _viewports(browser, (source, synthetic))
    _skip_tour(browser, wait=10 if shown else 0)
    screenshot = save_screenshot(browser, "viewer_synthetic_beside_source")
    assert shown is not None, (f"OHIF did not render {source!r} and {synthetic!r} in {RENDER_TIMEOUT} s "
                               f"(see {screenshot}); on screen: {browser.find_element(By.TAG_NAME, 'body').text}")
    assert browser.current_url.startswith(f"{stack.url}/viewer/viewer"), browser.current_url

    # The study panel lists both series of the study, each with its description.
    thumbnails = browser.find_elements(By.CSS_SELECTOR, '[data-cy="study-browser-thumbnail"]')
    listed = [t.text for t in thumbnails]
    assert len(thumbnails) == 2, listed
    assert any(source in t for t in listed) and any("SYNTHETIC" in t for t in listed), listed
    # SYNTHETIC on screen in the synthetic series' description (its viewport's overlay).
    (overlay,) = [p for p in browser.find_elements(By.CSS_SELECTOR, '[data-cy="viewport-pane"]')
                  if synthetic in p.text]
    assert "SYNTHETIC" in overlay.text
    # Two images, not one drawn twice: the synthetic phase differs from its source (the two
    # viewports of a grid may differ by a pixel in size).
    h, w = np.minimum(shown[source].shape, shown[synthetic].shape)
    assert np.abs(shown[source][:h, :w] - shown[synthetic][:h, :w]).mean() > 2
    # The page read DICOMweb with its session cookie alone: no token in the page or its URL.
    assert stack.token not in browser.current_url and stack.token not in browser.page_source

    # OHIF's study list (QIDO-RS on the gateway) finds the study.
    browser.get(f"{stack.url}/viewer/")
    deadline = time.monotonic() + RENDER_TIMEOUT
    while patient_id not in browser.find_element(By.TAG_NAME, "body").text and time.monotonic() < deadline:
        time.sleep(1)
    save_screenshot(browser, "viewer_study_list")
    assert patient_id in browser.find_element(By.TAG_NAME, "body").text
