"""Headless Chromium over the DevTools protocol (aiohttp's websocket client): pages, JS, console errors, screenshots."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
         "--remote-debugging-port=0"]


def chromium_path() -> str:
    path = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if path is None:
        pytest.fail("chromium is not installed: run scripts/setup (it installs Debian's chromium)")
    return path


class Page:
    """One tab, attached through a flat DevTools session."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session
        self.errors: list[str] = []  # console errors, uncaught exceptions, failed loads
        self._load = asyncio.Event()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, params, session=self.session)

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self._load.set()
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"{entry.get('text')} {entry.get('url', '')}".strip())

    async def goto(self, url: str, timeout: float = 20) -> None:
        self._load.clear()
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(self._load.wait(), timeout)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"JS error in {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {expression}")
            await asyncio.sleep(0.1)

    async def box(self, selector: str, closest: str = "") -> dict[str, float]:
        """The element's getBoundingClientRect (left, top, right, bottom, width, height), in CSS pixels.

        With `closest`, the box of the element's nearest ancestor (or itself) matching that selector instead.
        """
        found = f"document.querySelector({json.dumps(selector)})"
        if closest:
            found += f".closest({json.dumps(closest)})"
        return await self.evaluate(
            f"(() => {{ const r = {found}.getBoundingClientRect();"
            " return {left: r.left, top: r.top, right: r.right, bottom: r.bottom, width: r.width,"
            " height: r.height}; })()")

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (so forms submit as a person's click would)."""
        box = await self.box(selector)
        x, y = box["left"] + box["width"] / 2, box["top"] + box["height"] / 2
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def screenshot(self, name: str, full_page: bool = True) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = await self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        data = await self.send("Page.captureScreenshot", **params)
        path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
        path.write_bytes(base64.b64decode(data["data"]))
        return path


class Browser:
    """A headless Chromium process and its browser-level DevTools websocket."""

    def __init__(self, process: asyncio.subprocess.Process, ws: aiohttp.ClientWebSocketResponse,
                 http: aiohttp.ClientSession) -> None:
        self.process = process
        self.ws = ws
        self.http = http
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(AssertionError(f"DevTools error: {data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
            elif (page := self._pages.get(data.get("sessionId", ""))) is not None:
                page.on_event(data["method"], data.get("params", {}))

    async def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
                   timeout: float = 30) -> dict[str, Any]:
        message_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        await self.ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, timeout)

    async def new_page(self, width: int = 1360, height: int = 900) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        self._pages[page.session] = page
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        await page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=False)
        return page


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A fresh headless Chromium with its own profile; killed and removed afterwards."""
    profile = tempfile.mkdtemp(prefix="forgeci-chromium-")
    process = await asyncio.create_subprocess_exec(
        chromium_path(), *FLAGS, f"--user-data-dir={profile}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    http = aiohttp.ClientSession()
    try:
        url = None
        assert process.stderr is not None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = await asyncio.wait_for(process.stderr.readline(), 30)
            if not line:
                break
            match = re.search(rb"DevTools listening on (ws://\S+)", line)
            if match:
                url = match.group(1).decode()
        if url is None:
            pytest.fail("chromium did not start its DevTools endpoint (is scripts/setup's chromium installed?)")
        # Drain the rest of stderr so a chatty browser never blocks on a full pipe.
        drain = asyncio.create_task(process.stderr.read())
        ws = await http.ws_connect(url, max_msg_size=0)
        browser = Browser(process, ws, http)
        try:
            yield browser
        finally:
            browser._reader.cancel()
            await ws.close()
            drain.cancel()
    finally:
        await http.close()
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        shutil.rmtree(profile, ignore_errors=True)
