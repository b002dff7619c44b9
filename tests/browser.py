"""A real headless Chromium (Debian's `chromium` package) driven over the Chrome DevTools Protocol.

Why CDP directly, over aiohttp's websocket client, rather than selenium + chromedriver: the tests are
asyncio (the daemon, the nodes and the page are awaited side by side) and CDP is async by nature; it needs
no new package and no second process (chromedriver), and nothing can try to download a browser or a driver
(selenium-manager would, unless told not to). It gives what the tests need in one protocol: granting the
clipboard permission, the viewport of a phone, real mouse clicks, screenshots.

The browser starts with the flags that keep it off the network (no background networking, no component
updates, no sync) in a fresh profile, and is killed with its profile at the end. Missing chromium fails in
CI (env CI set) and skips elsewhere, as tests/seed_servers.py does for PHP and Go.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CHROMIUM = "/usr/bin/chromium"
INSTALL_HINT = "run scripts/install-system-packages.sh as root (`make test` runs it): Debian's chromium"
# Where the tests write their screenshots (gitignored; the README's Tests section names it).
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container has no user namespace for the sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--hide-scrollbars",
    "--remote-debugging-port=0",  # chromium picks one and writes it to DevToolsActivePort
)
START_S = 30.0


def chromium_path() -> str:
    """The system browser, or a skip (a failure in CI)."""
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        message = f"chromium is not installed: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class CdpError(Exception):
    pass


class Browser:
    """One chromium process and one websocket to it; pages are targets attached in flat mode."""

    def __init__(self) -> None:
        self._profile = Path(tempfile.mkdtemp(prefix="chromium-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.port = 0

    def _launch(self) -> subprocess.Popen[bytes]:
        with (self._profile / "chromium.log").open("wb") as log:
            return subprocess.Popen(
                [chromium_path(), *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    async def start(self) -> None:
        self._process = self._launch()
        active = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_S
        while not (active.exists() and len(active.read_text().splitlines()) >= 2):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise CdpError(f"chromium did not start:\n{self.log()}")
            await asyncio.sleep(0.05)
        port, path = active.read_text().splitlines()[:2]
        self.port = int(port)
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self._reader = asyncio.create_task(self._read())

    def log(self) -> str:
        path = self._profile / "chromium.log"
        return path.read_text("utf-8", "replace")[-4000:] if path.exists() else ""

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._session is not None:
            await self._session.close()
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> Any:
        assert self._ws is not None
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        await self._ws.send_str(json.dumps(message))
        answer = await asyncio.wait_for(future, 30)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            future = self._waiting.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(CdpError(f"the browser went away:\n{self.log()}"))

    async def new_page(self, width: int = 1280, height: int = 800, mobile: bool = False) -> Page:
        target = (await self.send("Target.createTarget", {"url": "about:blank"}))["targetId"]
        attached = await self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        session = attached["sessionId"]
        page = Page(self, target, session)
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        # A headless page has no focus of its own; the clipboard API wants a focused document.
        await page.send("Emulation.setFocusEmulationEnabled", {"enabled": True})
        await page.viewport(width, height, mobile)
        return page

    async def grant_clipboard(self, origin: str) -> None:
        await self.send(
            "Browser.grantPermissions",
            {"origin": origin, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
        )


class Page:
    def __init__(self, browser: Browser, target: str, session: str) -> None:
        self.browser = browser
        self.target = target
        self.session = session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.browser.send(method, params, self.session)

    async def close(self) -> None:
        await self.browser.send("Target.closeTarget", {"targetId": self.target})

    async def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    async def goto(self, url: str) -> int:
        """Open `url` and wait until it loaded; the HTTP status of the document."""
        answer = await self.send("Page.navigate", {"url": url})
        if answer.get("errorText"):
            raise CdpError(f"{url}: {answer['errorText']}")
        await self.wait_for("document.readyState === 'complete'")
        status: int = await self.evaluate("performance.getEntriesByType('navigation')[0].responseStatus")
        return status

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        answer = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True, "userGesture": False},
        )
        if "exceptionDetails" in answer:
            raise CdpError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 30.0) -> Any:
        """Until `expression` is truthy in the page: its value. The deadline only bounds a failure."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"never true in the page: {expression}")
            await asyncio.sleep(0.1)

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (a user gesture, as a customer's)."""
        box = await self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}
            )

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (not just the viewport) at the current width."""
        shot = await self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        return _write(path, base64.b64decode(shot["data"]))


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@contextlib.asynccontextmanager
async def running_browser() -> AsyncIterator[Browser]:
    browser = Browser()
    try:
        await browser.start()
        yield browser
    finally:
        await browser.close()
