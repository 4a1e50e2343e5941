"""Screenshot of the live page for the README: `vqinc serve --http 0` with the bundled model, a sentence
typed into the page by headless Chromium (Debian's chromium + chromium-driver, through Selenium), and a
PNG of the result.

    python -m benchmarks.serve_screenshot [--out benchmarks/results/serve/page.png]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TYPED = " The new type is hashable and immutable, and it shares its implementation with dict."
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1100,720", "--hide-scrollbars"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve" / "page.png"))
    p.add_argument("--model-dir", default=None)
    args = p.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    cmd = [sys.executable, "-m", "vqinc.runtime.cli", "serve", *([args.model_dir] if args.model_dir else []),
           "--http", "0", "--threads", "1"]
    server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not m:
            raise SystemExit(f"server did not start: {line}")
        with tempfile.TemporaryDirectory() as profile:
            opts = webdriver.ChromeOptions()
            opts.binary_location = "/usr/bin/chromium"
            for flag in [*FLAGS, f"--user-data-dir={profile}"]:
                opts.add_argument(flag)
            driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
            try:
                driver.get(f"http://127.0.0.1:{m.group(1)}/")
                wait = WebDriverWait(driver, 60)
                wait.until(lambda d: d.find_element(By.ID, "label").text not in ("", "–"))
                ta = driver.find_element(By.ID, "text")
                ta.click()
                ta.send_keys(Keys.CONTROL, Keys.END)
                for ch in TYPED:  # one keystroke at a time, as a person types
                    ta.send_keys(ch)
                    time.sleep(0.03)
                wait.until(lambda d: d.find_element(By.ID, "edits").text == str(len(TYPED)))
                time.sleep(0.3)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(args.out)
                print(f"wrote {args.out}")
            finally:
                driver.quit()
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
