"""Headless Chromium over the DevTools protocol (websocket-client comes with visdom).

`python tests/browser.py URL OUT.png` saves a screenshot of a page once its plots are drawn.
"""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--remote-allow-origins=*", "--hide-scrollbars"]

# Counts, from the DOM, of what the Visdom page shows of each window.
PAGE_STATE = """JSON.stringify({
  titles: [...document.querySelectorAll('.react-grid-item .bar > div.pull-right')].map(b => b.innerText.trim()),
  plots: [...document.querySelectorAll('.js-plotly-plot')].filter(p => p.querySelector('svg.main-svg')).length,
  traces: document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length,
  heatmaps: document.querySelectorAll('.js-plotly-plot .heatmaplayer image, .js-plotly-plot .hm').length,
  images: [...document.querySelectorAll('.react-grid-item img')].filter(i => i.complete && i.naturalWidth > 0).length
})"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    def __init__(self, width: int = 1500, height: int = 1250) -> None:
        self.profile = tempfile.mkdtemp(prefix="capsnet-chromium-")
        self.process = subprocess.Popen([chromium(), *FLAGS, f"--window-size={width},{height}",
                                         f"--user-data-dir={self.profile}", "about:blank"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        active = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.exists() and active.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Chromium did not start")
            time.sleep(0.1)
        port = active.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120)
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression,
                         returnByValue=True)["result"].get("value")

    def page_state(self) -> dict:
        return json.loads(self.evaluate(PAGE_STATE) or "{}")

    def wait_for(self, done, timeout: float = 120.0, waiting=lambda: False) -> dict:
        """Poll the page state until done(state) holds, or `timeout` has passed while
        waiting() says nothing is worth waiting for any longer; return the last state."""
        deadline = time.monotonic() + timeout
        state = self.page_state()
        while not done(state) and (time.monotonic() < deadline or waiting()):
            time.sleep(0.5)
            state = self.page_state()
        return state

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.socket.close()
        self.process.kill()
        self.process.wait(30)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


if __name__ == "__main__":
    url, out = sys.argv[1], Path(sys.argv[2])
    with Browser(1500, 1900) as browser:
        browser.goto(url)
        print(browser.wait_for(lambda s: s.get("plots", 0) >= 6 and s.get("images", 0) >= 5))
        time.sleep(2)
        browser.screenshot(out)
    print(f"saved {out}")
