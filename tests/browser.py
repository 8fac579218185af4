"""Open a local html page in headless Chromium with the network disabled and report what rendered, over the DevTools
protocol (aiohttp's websocket client, already a dependency of dvc; no browser-driver package).

Network disabled: the page is a file:// url, and every http(s)/ws request, loopback included
(`--proxy-bypass-list=<-loopback>`), goes to a proxy on 127.0.0.1:9 where nothing listens, so it fails at once
instead of reaching a CDN. Requests are also recorded, so a test can assert that none was even attempted.
The DevTools connection itself is the browser's server socket and does not go through the proxy.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--remote-debugging-port=0")
# Rendered vega views: vega-embed puts one canvas (or svg) with class "marks" into each plot's div.
VIEWS_JS = "document.querySelectorAll('canvas.marks, svg.marks').length"


def chromium() -> str | None:
    """The Chromium binary, or None when it is not installed."""
    return CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")


@dataclasses.dataclass(frozen=True)
class PageReport:
    views: int              # rendered vega views
    errors: list[str]       # uncaught exceptions, console.error/assert, browser log errors
    requests: list[str]     # every url the page asked for that is not file:, data: or blob:
    values: dict            # the results of the `evaluate` expressions, by expression


def open_page(page: Path, screenshot: Path, expect_views: int, evaluate: tuple[str, ...] = (),
              timeout: float = 30.0, width: int = 1280) -> PageReport:
    """Load `page`, wait until `expect_views` vega views rendered (or the page settles short of it, or `timeout`),
    write a full-page screenshot, and return what happened."""
    # Chromium's helper processes may still write to the profile as the browser exits: stop the whole process
    # group, and let a late write not fail the clean-up of the temporary profile.
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            port = _devtools_port(proc, timeout)
            return asyncio.run(asyncio.wait_for(
                _drive(port, page, screenshot, expect_views, evaluate, timeout, width), timeout + 10))
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the browser's process group, SIGKILL it after 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def _devtools_port(proc: subprocess.Popen, timeout: float) -> int:
    """Chromium prints `DevTools listening on ws://127.0.0.1:PORT/...` on stderr once it is ready."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        match = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
        if match:
            # keep draining stderr so Chromium never blocks on a full pipe
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return int(match[1])
    raise RuntimeError(f"{CHROMIUM} did not start its DevTools server:\n{''.join(seen[-20:])}")


class _Session:
    def __init__(self, ws):
        self.ws, self.next_id, self.events = ws, 0, []

    async def send(self, method: str, **params):
        """One DevTools command; events arriving meanwhile are kept in `events`."""
        self.next_id += 1
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")


async def _drive(port, page, screenshot, expect_views, evaluate, timeout, width) -> PageReport:
    async with aiohttp.ClientSession(trust_env=False) as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        async with http.ws_connect(url, max_msg_size=0) as ws:
            s = _Session(ws)
            for domain in ("Page", "Runtime", "Log", "Network"):
                await s.send(f"{domain}.enable")
            await s.send("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1,
                         mobile=False)
            await s.send("Page.navigate", url=page.resolve().as_uri())
            deadline = time.monotonic() + timeout
            views, last, stable_since = 0, -1, time.monotonic()
            while time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                ready = await s.evaluate("document.readyState")
                views = await s.evaluate(VIEWS_JS)
                if views != last:
                    last, stable_since = views, time.monotonic()
                if ready == "complete" and (views >= expect_views or time.monotonic() - stable_since > 3):
                    break
            await asyncio.sleep(0.5)  # let late errors arrive
            values = {expr: await s.evaluate(expr) for expr in evaluate}
            height = await s.evaluate("Math.ceil(document.documentElement.scrollHeight)")
            await s.send("Emulation.setDeviceMetricsOverride", width=width, height=min(int(height), 16000),
                         deviceScaleFactor=1, mobile=False)
            shot = await s.send("Page.captureScreenshot", format="png")
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            await s.evaluate("0")  # flush pending events
            return PageReport(views=views, errors=_errors(s.events), requests=_requests(s.events), values=values)


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append((d.get("exception") or {}).get("description") or d.get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append(f"{p['entry']['text']} {p['entry'].get('url', '')}".strip())
    return out


def _requests(events: list[dict]) -> list[str]:
    return [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"
            and not e["params"]["request"]["url"].startswith(("file:", "data:", "blob:"))]
