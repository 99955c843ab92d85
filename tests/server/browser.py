"""Headless Chromium driven through Selenium and Debian's chromedriver, for tests that use the UIs as a
person does (click, wait for text, follow links). Screenshots are kept under ``test-artifacts/`` (or
``$LOC2VEC_TEST_ARTIFACTS``), one directory per test.

CI needs the Debian packages: ``apt-get install -y --no-install-recommends chromium chromium-driver``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WINDOW = (1600, 1000)
ARTIFACTS = Path(os.environ.get("LOC2VEC_TEST_ARTIFACTS", ROOT / "test-artifacts"))

needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)"
)


class Browser:
    """One headless Chromium window; every wait fails with what the page showed instead."""

    def __init__(self, driver, artifacts: Path):
        self.driver = driver
        self.artifacts = artifacts
        self._welcomed = False

    def open(self, url: str) -> None:
        self.driver.get(url)

    def text(self) -> str:
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.by import By

        try:
            return self.driver.find_element(By.TAG_NAME, "body").text
        except WebDriverException:  # the page is being replaced
            return ""

    def wait_text(self, *texts: str, timeout: float = 60.0) -> str:
        """Wait until the page shows every one of ``texts``; return the page's text."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.text()
            if all(t in body for t in texts):
                return body
            if time.monotonic() > deadline:
                shot = self.shot("timeout")
                missing = [t for t in texts if t not in body]
                pytest.fail(
                    f"{self.driver.current_url}: {missing} not shown after {timeout:.0f} s ({shot}):\n{body[:3000]}"
                )
            time.sleep(0.5)

    def button(self, label: str, timeout: float = 30.0):
        """The first visible, enabled button whose text starts with ``label``."""
        from selenium.webdriver.common.by import By

        deadline = time.monotonic() + timeout
        while True:
            for element in self.driver.find_elements(By.TAG_NAME, "button"):
                with contextlib.suppress(Exception):
                    if element.text.strip().startswith(label) and element.is_displayed() and element.is_enabled():
                        return element
            if time.monotonic() > deadline:
                pytest.fail(f"{self.driver.current_url}: no enabled button {label!r} ({self.shot('no-button')})")
            time.sleep(0.5)

    def dismiss_dagster_welcome(self, timeout: float = 10.0) -> None:
        """Dagster's "Join the Dagster community" dialog opens shortly after the first page of an instance
        that never showed it, and covers the page: wait a little for it and skip it (it is shown once)."""
        if self._welcomed:
            return
        self._welcomed = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Join the Dagster community" in self.text():
                self.button("Skip").click()
                return
            time.sleep(0.5)

    def links(self) -> dict[str, str]:
        """Every link on the page: href by visible text."""
        from selenium.webdriver.common.by import By

        found = {}
        for element in self.driver.find_elements(By.TAG_NAME, "a"):
            with contextlib.suppress(Exception):
                found[element.text.strip()] = element.get_attribute("href") or ""
        return found

    def shot(self, name: str) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@contextlib.contextmanager
def browser(test_name: str) -> Iterator[Browser]:
    """A headless Chromium (no network beyond 127.0.0.1 is needed); its screenshots go to ARTIFACTS/test_name."""
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield Browser(driver, ARTIFACTS / test_name)
    finally:
        driver.quit()
