"""Headless Chromium driven over the DevTools protocol (for the dashboard test)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
)  # fmt: skip


class Browser:
    """One Chromium with a fresh profile and one page; console errors and requests are recorded."""

    def __init__(self, folder: Path, width: int = 1440, height: int = 1000, dark: bool = False) -> None:
        import websocket

        profile = folder / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        argv = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", f"--window-size={width},{height}"]
        self.proc = subprocess.Popen(
            [*argv, "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self.events: list[dict[str, Any]] = []
        self._id = 0
        try:
            port = self._port(profile / "DevToolsActivePort")
            pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
            url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
            self.ws = websocket.create_connection(url, timeout=20, suppress_origin=True)
            for domain in ("Runtime", "Log", "Network", "Page"):
                self.call(f"{domain}.enable")
            self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
            scheme = "dark" if dark else "light"
            self.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": scheme}])
        except BaseException:
            self.close()
            raise

    def _port(self, path: Path) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited {self.proc.returncode}")
            try:
                return int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        raise RuntimeError("chromium did not open its DevTools port")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events read meanwhile are kept)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})  # type: ignore[no-any-return]
            self.events.append(msg)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def navigate(self, url: str) -> None:
        """Open url in the page."""
        self.call("Page.navigate", url=url)

    def screenshot(self, path: Path) -> None:
        """A PNG of the whole page."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)["data"]
        path.write_bytes(base64.b64decode(data))

    def console_errors(self) -> list[str]:
        """Every console error, uncaught exception and failed request seen so far."""
        self.evaluate("1")  # read what is pending
        errors = []
        for msg in self.events:
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                errors.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append("log: " + params["entry"].get("text", "") + " " + params["entry"].get("url", ""))
            elif method == "Network.loadingFailed":
                errors.append("request failed: " + json.dumps(params)[:300])
        return errors

    def requested_urls(self) -> list[str]:
        """Every URL the page asked for."""
        return [m["params"]["request"]["url"] for m in self.events if m.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        """End Chromium and every process of its group."""
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
