"""Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe):
open a page, run JavaScript in it, wait for what a person would see, take a screenshot.

No browser driver package: the protocol is JSON messages separated by NUL bytes on fds 3/4.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
MISSING = "chromium is not installed: run `make chromium` (apt-get install -y chromium)"


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium with a fresh, empty profile; one page at a time."""

    def __init__(self, width: int = 1400, height: int = 1000) -> None:
        path = chromium_path()
        if path is None:
            raise RuntimeError(MISSING)
        self._profile = tempfile.TemporaryDirectory(prefix="dfuhil-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire() -> None:
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self._process = subprocess.Popen(
            [
                path,
                *FLAGS,
                f"--user-data-dir={self._profile.name}",
                f"--window-size={width},{height}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            preexec_fn=wire,
            pass_fds=(3, 4),  # kept open after wire() puts the pipes there
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]

    def _call(self, method: str, params: dict[str, Any], session: str | None = None) -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_child, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium closed its pipe during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def page(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return self._call(method, params or {}, self._session)

    def open(self, url: str) -> None:
        self.page("Page.enable")
        self.page("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        result = self.page(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        return result.get("result", {}).get("value")

    def wait_for(
        self, expression: str, timeout_s: float = 120.0, reload_every_s: float = 30.0
    ) -> Any:
        """Evaluate until truthy; the last value on timeout (the caller's assert says why).
        Generous: Allure's one-file report is a large script, slow to start on a busy machine.
        A page still without it after ``reload_every_s`` is reloaded, as a person would: once
        in CI (3 workers on 2 cores) Allure 3.18's one-file report loaded completely but drew
        only its frame, for minutes; the same file drew at once when opened again."""
        start = time.monotonic()
        deadline = start + timeout_s
        reload_at = start + reload_every_s
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() >= reload_at:
                self.page("Page.reload")
                reload_at = time.monotonic() + reload_every_s
            time.sleep(0.2)
        return value

    def shown(self) -> str:
        """What the page shows now (its state and the start of its text), for a failure."""
        text = self.evaluate(
            "document.readyState + ': ' + (document.body ? document.body.innerText : '')"
        )
        return str(text)[:400]

    def screenshot(self, path: Path) -> None:
        data = self.page("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            self._call("Browser.close", {})
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for fd in (self._to_child, self._from_child):
            os.close(fd)
        self._profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
