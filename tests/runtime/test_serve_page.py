"""The live page in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium through
/usr/bin/chromedriver): typing sends one edit per keystroke, the label, probabilities, ms per edit, ops
saved and the plot appear, and the server's document stays equal to the text area, an emoji pasted in
the middle included (the page converts UTF-16 offsets to code points)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from serve_support import TIMEOUT, web_server

from vqinc.runtime.serve.manager import ServeLimits

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1200,820"]


def chromium_driver(profile: Path):
    """Selenium on Debian's Chromium; skipped only where apt itself is missing (make test installs both)."""
    if not (CHROMIUM.exists() and DRIVER.exists()):
        if shutil.which("apt-get") is None:
            pytest.skip("apt-get is not available on this machine, so Debian's chromium and chromium-driver "
                        "cannot be installed: the live page is not tested here")
        pytest.fail(f"{CHROMIUM} or {DRIVER} is missing: `make test` installs them (apt-get install chromium "
                    f"chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    # An explicit driver path: Selenium's own driver manager would try to download one.
    return webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=opts)


def _server_text(mgr) -> str:
    (rec,) = [r for k, r in mgr._docs.items() if k[2] == "page"]
    return rec.doc.text


def test_typing_into_the_page_shows_label_and_stats(loaded, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    model = loaded["llama-none"]
    with web_server(model) as (front, mgr):
        driver = chromium_driver(tmp_path / "profile")
        try:
            driver.get(f"http://127.0.0.1:{front.port}/")
            wait = WebDriverWait(driver, TIMEOUT)
            text = lambda el: driver.find_element(By.ID, el).text  # noqa: E731
            wait.until(lambda d: text("label") in model.labels)  # the open's result arrived
            assert text("status") == "connected" and text("edits") == "0"

            ta = driver.find_element(By.ID, "text")
            ta.click()
            ta.send_keys(Keys.END, " Wonderful!")  # 11 keystrokes, one edit each
            wait.until(lambda d: text("edits") == "11")
            value = ta.get_property("value")
            assert value.endswith(" Wonderful!") and _server_text(mgr) == value

            ref = model.document(value)
            assert text("label") == ref.label
            for i in range(len(model.labels)):
                assert float(driver.find_element(By.ID, f"p{i}").text) == pytest.approx(ref.probs[i], abs=1e-3)
                width = driver.find_element(By.ID, f"bar{i}").value_of_css_property("width")
                assert float(width.removesuffix("px")) > 0 or ref.probs[i] < 0.01
            assert re.fullmatch(r"\d+\.\d\d ms", text("ms")) and re.fullmatch(r"\d+\.\d\d ms", text("rtt"))
            assert re.fullmatch(r"\d+\.\d×", text("saved")) and int(text("tokens")) == len(ref.token_ids)

            # An astral character pasted in the middle (ChromeDriver types only the BMP), then two
            # backspaces (END goes to the end of the wrapped first line: a deletion mid-text).
            driver.execute_script("const t = arguments[0]; t.setRangeText('🙂', 3, 3, 'end');"
                                  "t.dispatchEvent(new Event('input'));", ta)
            wait.until(lambda d: text("edits") == "12")
            ta.send_keys(Keys.END, Keys.BACKSPACE, Keys.BACKSPACE)
            wait.until(lambda d: text("edits") == "14")
            value = ta.get_property("value")
            assert "🙂" in value and _server_text(mgr) == value
            assert text("label") == model.document(value).label

            points = driver.execute_script("return series.length")
            inked = driver.execute_script(
                "const c = document.getElementById('plot');"
                "const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                "let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i]) n++; return n;")
            assert points == 14 and inked > 500  # one point per edit, and the lines are drawn
            driver.save_screenshot(str(tmp_path / "page.png"))
        finally:
            driver.quit()


def test_page_over_the_size_limit_says_so_and_resyncs(loaded, tmp_path):
    """Typing past --max-chars: the server refuses the edit, the page shows why; deleting back under the
    limit reopens the document, and the server's copy equals the text area again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    model = loaded["llama-none"]
    with web_server(model, ServeLimits(max_chars=90)) as (front, mgr):
        driver = chromium_driver(tmp_path / "profile")
        try:
            driver.get(f"http://127.0.0.1:{front.port}/")
            wait = WebDriverWait(driver, TIMEOUT)
            text = lambda el: driver.find_element(By.ID, el).text  # noqa: E731
            wait.until(lambda d: text("label") in model.labels)
            ta = driver.find_element(By.ID, "text")
            start = ta.get_property("value")
            assert 80 <= len(start) <= 90
            ta.send_keys(Keys.CONTROL, Keys.END)  # (a modifier holds for the rest of one send_keys call)
            ta.send_keys(" and more words")
            wait.until(lambda d: "limit of 90" in text("status"))
            ta.send_keys(*[Keys.BACKSPACE] * 15)
            wait.until(lambda d: text("status") == "connected" and _server_text(mgr) == start)
            assert text("label") == model.document(start).label
        finally:
            driver.quit()
