"""A real headless Chromium (Debian's `chromium` + `chromium-driver`) driven over WebDriver,
for the tests that look at a page as a person would, and where their screenshots go.

The flags keep Chromium off the network (this machine has none but loopback) and out of
any profile: a fresh --user-data-dir per browser. Screenshots are test artefacts, kept
under $SYNTH_TEST_ARTEFACTS (default: var/test-artefacts in the checkout)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.peers import PeerError

REPO = Path(__file__).resolve().parents[1]
ARTEFACTS = Path(os.environ.get("SYNTH_TEST_ARTEFACTS") or REPO / "var" / "test-artefacts")
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1600,1000",
)


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise PeerError(f"{name} not found: install Debian's chromium and chromium-driver (make system-deps)")
    return path


@contextmanager
def chromium(*, width: int = 1600, height: int = 1000) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with its own empty profile; quit and removed on exit."""
    profile = tempfile.mkdtemp(prefix="synth-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=_binary("chromedriver")))
    try:
        driver.set_page_load_timeout(120)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def save_screenshot(driver: webdriver.Chrome, name: str) -> Path:
    """Save the page as ARTEFACTS/<name>.png and return its path."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}.png"
    if not driver.save_screenshot(str(path)):
        raise AssertionError(f"Chromium could not save a screenshot to {path}")
    return path
