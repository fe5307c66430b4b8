"""Headless Chromium, driven over the DevTools protocol, for the tests that look at the MLflow UI:
open a page, wait for a text, read the page, click, and take a screenshot.

``chromium --dump-dom`` can only read one page as it stands after a time budget; the MLflow UI
needs a few clicks (close its assistant panel, expand a parent run) before it shows what a
person would look at, so the tests drive one browser over its DevTools websocket (aiohttp's
client, already installed with Ray). The browser is the test's own process, stopped by it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

# what the MLflow 3.17 UI keeps in the browser (``<key>_v<version>``, JSON): its assistant panel
# closed, its one-time tips shown (they would cover the pages otherwise)
QUIET_UI = {
    "mlflow.assistant.panelOpen_v1": False,
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True,
    "mlflow.detectIssues.guidanceShown_v1": True,
    "mlflow.flagForReview.guidanceShown_v1": True,
}


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
    assert Path(found).exists(), "chromium is installed by .ci/run (apt-get install chromium)"
    return found


class Browser:
    """One headless Chromium and its first tab; use as a context manager."""

    def __init__(self, profile: Path, width: int = 1600, height: int = 1000) -> None:
        self.profile, self.width, self.height = profile, width, height
        self._ids = itertools.count(1)
        self.loop = asyncio.new_event_loop()

    def __enter__(self) -> Browser:
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            f"--window-size={self.width},{self.height}",
            "about:blank",
        ]
        self.proc = subprocess.Popen([chromium(), *flags], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        port = None
        while port is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            match = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            port = int(match.group(1)) if match else None
            if not line and self.proc.poll() is not None:
                break
        assert port, "chromium did not start its DevTools endpoint"
        self.loop.run_until_complete(self._connect(port))
        return self

    async def _connect(self, port: int) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as response:
            pages = [t for t in await response.json(content_type=None) if t["type"] == "page"]
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        await self._call("Page.enable")
        await self._call("Runtime.enable")

    def __exit__(self, *exc: Any) -> None:
        try:
            self.loop.run_until_complete(self._close())
        finally:
            self.loop.close()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def _close(self) -> None:
        await self.ws.close()
        await self.session.close()

    async def _call(self, method: str, **params: Any) -> dict:
        call_id = next(self._ids)
        await self.ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads((await self.ws.receive(timeout=60)).data)
            if message.get("id") == call_id:
                assert "error" not in message, message
                return message.get("result", {})

    def call(self, method: str, **params: Any) -> dict:
        return self.loop.run_until_complete(self._call(method, **params))

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        return self.js("document.body ? document.body.innerText : ''") or ""

    def wait_text(self, *texts: str, timeout: float = 60) -> str:
        """The page's text once it holds every one of ``texts``."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.text()
            if all(t in shown for t in texts):
                return shown
            if time.monotonic() > deadline:
                missing = [t for t in texts if t not in shown]
                raise AssertionError(f"page lacks {missing}; it shows: {shown[:1500]}")
            time.sleep(0.5)

    def quiet(self, origin: str) -> None:
        """Open ``origin`` and keep the UI's assistant panel and tips out of the way."""
        self.open(origin)
        self.wait_text("Experiments")
        for key, value in QUIET_UI.items():
            self.js(f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(value))})")

    def runs_table(self, experiment_id: str, expanded: list[str], columns: list[str], name_width: int = 300) -> None:
        """What a person sets in the runs table by hand, set beforehand (the UI keeps it in the
        browser, per experiment): ``expanded`` parent runs open on their children, ``columns``
        (``metrics.`map_at_r```, ``params.`loss.lambda```) shown, the run name column widened."""
        key = f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState'
        # the table applies widths only to the columns of its saved order ("1": the checkboxes)
        order = ["1", "attributes.`Run Name`", "runDateAndNestInfo", "duration", *columns]
        state = {
            "selectedColumns": columns,
            "columnOrder": order,
            "columnWidths": {"attributes.`Run Name`": name_width, **{c: 170 for c in columns}},
            "runsExpanded": {run: True for run in expanded},
        }
        self.js(f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(state))})")

    def screenshot(self, path: Path) -> Path:
        self.call(
            "Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1, mobile=False
        )
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path
