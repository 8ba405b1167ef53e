"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver`` packages), driven
by Selenium. Never a browser download: the driver's path is given explicitly, so Selenium
Manager has nothing to look up, and ``SE_OFFLINE`` forbids it to try. Without Chromium the
browser tests skip with the reason, except under ``CI``, where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI, ROOT

CHROMIUM = os.environ.get("KILN_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("KILN_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTEFACTS = ROOT / "test-artefacts"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
)


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason}; CI requires it (apt-get install chromium chromium-driver)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One headless Chromium for the session, 1280x800, with a fresh profile."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            _missing(f"{path} is not installed")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        _missing(f"selenium is not installed ({exc})")
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    driver = webdriver.Chrome(
        service=Service(executable_path=CHROMEDRIVER, log_output=str(log)), options=options
    )
    driver.set_page_load_timeout(20)
    # --window-size is the outer window; make the page itself 1280x800, the size the
    # dashboard must be readable at.
    width, height = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(1280 + (1280 - width), 800 + (800 - height))
    assert driver.execute_script("return [window.innerWidth, window.innerHeight]") == [1280, 800]
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def artefacts() -> Path:
    """``test-artefacts/`` at the repository root: the screenshots the tests save."""
    ARTEFACTS.mkdir(exist_ok=True)
    return ARTEFACTS
