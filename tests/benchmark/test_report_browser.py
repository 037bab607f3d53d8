"""The leaderboard page in headless Chromium (Debian's chromium), driven over the DevTools protocol: tables and
figures are there, injected markup in the data did not run, and the console stays free of errors, on a desktop
and on a phone-sized screen."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from benchmark import report as R
from tests.benchmark.test_reporting import XSS_SITE, fixed_records
from tests.conftest import stop_process_group

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
)

CHECKS = """(() => {
  const imgs = [...document.querySelectorAll('figure img')];
  return JSON.stringify({
    title: document.title,
    pwned: typeof window.__pwned !== 'undefined',
    scripts: document.querySelectorAll('script').length,
    injectedImgs: document.querySelectorAll('img[onerror], img[src="x"]').length,
    leaderboards: document.querySelectorAll('table.leaderboard').length,
    fidTables: document.querySelectorAll('table.fid').length,
    bestCells: document.querySelectorAll('td.best').length,
    verdicts: [...document.querySelectorAll('div.verdict')].map(d => d.innerText),
    comparisons: document.querySelectorAll('table.comparisons tbody tr').length,
    figures: imgs.length,
    figuresLoaded: imgs.filter(i => i.complete && i.naturalWidth > 100).length,
    xssText: document.body.innerText.includes(XSS_SITE),
    sections: [...document.querySelectorAll('section.task h2')].map(h => h.textContent),
    cell: (document.querySelector('table[data-task="nsclc"][data-split="test_unseen"] tr[data-method="medi"] ' +
           'td[data-metric="test_unseen/balanced_accuracy"]') || {}).textContent,
    pageWidth: document.documentElement.scrollWidth,
    viewport: window.innerWidth,
  });
})()""".replace("XSS_SITE", json.dumps(XSS_SITE))


def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        pytest.fail("Debian's chromium is not installed: run scripts/setup.sh --test (it installs chromium and "
                    "poppler-utils for the report tests)")
    return path


class DevTools:
    """A minimal DevTools-protocol client for one page target (aiohttp's websocket client)."""

    def __init__(self, ws):
        self.ws, self.next_id, self.events = ws, 0, []

    async def _send(self, method: str, params: dict) -> int:
        self.next_id += 1
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        return self.next_id

    async def _event(self, msg: dict) -> None:
        self.events.append(msg)
        if msg["method"] == "Page.javascriptDialogOpening":  # an alert() ran: record it, close it, keep going
            await self._send("Page.handleJavaScriptDialog", {"accept": True})

    async def call(self, method: str, **params) -> dict:
        my_id = await self._send(method, params)
        while True:
            msg = json.loads((await self.ws.receive(timeout=60)).data)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                await self._event(msg)

    async def wait_for(self, event: str, timeout: float = 60) -> dict:
        deadline = time.time() + timeout
        seen = len(self.events)
        while time.time() < deadline:
            for msg in self.events[seen:]:
                if msg["method"] == event:
                    return msg
            seen = len(self.events)
            msg = json.loads((await self.ws.receive(timeout=deadline - time.time())).data)
            if "method" in msg:
                await self._event(msg)
        raise TimeoutError(event)

    async def drain(self, seconds: float) -> None:
        end = time.time() + seconds
        while (left := end - time.time()) > 0:
            try:
                msg = json.loads((await self.ws.receive(timeout=left)).data)
            except asyncio.TimeoutError:
                return
            if "method" in msg:
                await self._event(msg)


async def inspect(port: int, url: str, shots: Path) -> tuple[list[dict], list[dict]]:
    """Load ``url`` on a desktop and on a phone-sized viewport; the page checks and every event, per viewport."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t["type"] == "page")
        async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            cdp = DevTools(ws)
            for domain in ("Page", "Runtime", "Log"):
                await cdp.call(f"{domain}.enable")
            results, events = [], []
            for name, width, height, mobile in (("desktop", 1280, 900, False), ("phone", 375, 740, True)):
                cdp.events.clear()
                await cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                               deviceScaleFactor=1, mobile=mobile)
                await cdp.call("Page.navigate", url=url)
                await cdp.wait_for("Page.loadEventFired")
                await cdp.drain(0.5)  # late console messages
                value = await cdp.call("Runtime.evaluate", expression=CHECKS, returnByValue=True)
                results.append(json.loads(value["result"]["value"]))
                shot = await cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
                import base64

                (shots / f"leaderboard-{name}.png").write_bytes(base64.b64decode(shot["data"]))
                events.append(list(cdp.events))
            return results, events


def problems(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions, dialogs (alert) and error log entries."""
    out = []
    for e in events:
        m, p = e["method"], e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
            out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
        elif m == "Runtime.exceptionThrown":
            out.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
            out.append(f"log {p['entry']['level']}: {p['entry'].get('text')} ({p['entry'].get('url')})")
        elif m == "Page.javascriptDialogOpening":
            out.append(f"dialog: {p.get('type')} {p.get('message')!r}")
    return out


def test_leaderboard_in_headless_chromium(tmp_path):
    binary = chromium()
    root = tmp_path / "results"
    records = fixed_records(root)
    report = R.render(records, str(root))
    page = tmp_path / "leaderboard.html"
    page.write_text(report.html, encoding="utf-8")
    profile = tmp_path / "profile"
    log = open(tmp_path / "chromium.log", "w")
    proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.time() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert proc.poll() is None, f"chromium exited: {(tmp_path / 'chromium.log').read_text()[-2000:]}"
            assert time.time() < deadline, "chromium did not open its DevTools port within 60 s"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        (desktop, phone), (ev_desktop, ev_phone) = asyncio.run(inspect(port, page.as_uri(), tmp_path))
    finally:
        stop_process_group(proc, grace=15)
        log.close()
    print(f"screenshots: {tmp_path / 'leaderboard-desktop.png'} {tmp_path / 'leaderboard-phone.png'}")
    for result, events in ((desktop, ev_desktop), (phone, ev_phone)):
        assert problems(events) == []
        assert any(e["method"] == "Page.loadEventFired" for e in events)
        # the injected markup is text, not code
        assert result["title"] == "MeDiBench leaderboard" and not result["pwned"]
        assert result["scripts"] == 0 and result["injectedImgs"] == 0 and result["xssText"]
        # the tables and figures
        assert result["leaderboards"] == 4 and result["fidTables"] == 1
        assert result["figures"] == result["figuresLoaded"] == len(report.figures) == 7  # forest plot first
        # each task leads with its verdict: nsclc compares three pairs, uterine (none only) says it cannot
        assert len(result["verdicts"]) == 2
        assert "Primary: medi − none, balanced accuracy: +0.100" in result["verdicts"][0]
        assert "No comparison" in result["verdicts"][1] and result["comparisons"] == 3
        assert result["bestCells"] >= 6
        assert result["sections"] == [s for s in result["sections"] if s.startswith("Task ")] and len(
            result["sections"]) == 2
        assert result["cell"].startswith("0.820★[0.770, 0.870]")
    # on a phone the page itself does not scroll sideways (wide tables scroll inside their own box)
    assert phone["viewport"] == 375 and phone["pageWidth"] <= 375
    for name in ("desktop", "phone"):
        assert (tmp_path / f"leaderboard-{name}.png").stat().st_size > 10_000
