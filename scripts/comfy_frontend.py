"""Drive the real ComfyUI frontend in headless Chromium over the Chrome DevTools Protocol (CDP).

Used by the browser tier (``tests/host/test_browser.py``) and by ``scripts/workflow_api_to_ui.py``, which lays
nodes out with the sizes the frontend computes. Needs a system Chromium (Debian's ``chromium``, or the binary
named by ``$MVC_CHROMIUM``) and the ``websocket-client`` package; no browser is downloaded. The browser runs
with a fresh, temporary profile and is stopped by its own process handle.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HEADLESS_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio"]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# The page is ready once the app exists, extensions have loaded and the core node types are registered.
READY = ("!!(window.app && window.app.graph && window.app.canvas && window.LiteGraph"
         " && Array.isArray(window.app.extensions) && window.app.extensions.length > 0"
         " && window.LiteGraph.registered_node_types['SaveImage'])")


def find_chromium() -> str | None:
    """The Chromium binary to use: ``$MVC_CHROMIUM`` if set, else the first of the usual names on PATH."""
    explicit = os.environ.get("MVC_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


@dataclass(frozen=True)
class DrawnNode:
    """A node as the frontend draws it: ``bounds`` = ``(x, y, w, h)`` in graph units, title bar included."""

    id: int
    type: str
    registered: bool
    bounds: tuple[float, float, float, float]
    size: tuple[float, float]  # the body (below the title), as the frontend sized it

    def overlaps(self, other: DrawnNode) -> bool:
        (x0, y0, w0, h0), (x1, y1, w1, h1) = self.bounds, other.bounds
        return x0 < x1 + w1 and x1 < x0 + w0 and y0 < y1 + h1 and y1 < y0 + h0


class Frontend:
    """One headless Chromium page showing a running ComfyUI server's frontend.

    Every console message, exception, log entry and network request of the page is kept, so
    :meth:`problems` can report the errors caused by one set of scripts (one pack's, say).
    """

    def __init__(self, server_url: str, chromium: str, viewport: tuple[int, int] = (1600, 1000),
                 timeout_s: float = 120.0):
        self.server_url = server_url.rstrip("/")
        self.chromium = chromium
        self.viewport = viewport
        self.timeout_s = timeout_s
        self.events: list[dict] = []
        self._ids = itertools.count(1)
        self._process: subprocess.Popen | None = None
        self._profile: str | None = None
        self._ws = None

    # 1. lifecycle --------------------------------------------------------------------------------------------
    def __enter__(self) -> Frontend:
        try:
            self._launch()
            self._open_page()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _launch(self) -> None:
        import websocket  # websocket-client

        self._profile = tempfile.mkdtemp(prefix="mvc-chromium-")
        self._process = subprocess.Popen(
            [self.chromium, *HEADLESS_FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-port=0",
             f"--window-size={self.viewport[0]},{self.viewport[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self._profile) / "DevToolsActivePort"  # Chromium writes the port it picked here
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.chromium} did not start (exit code {self._process.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self._ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=self.timeout_s,
                                               suppress_origin=True)

    def _open_page(self) -> None:
        for domain in ("Runtime", "Log", "Page", "Network", "DOM"):
            self.send(f"{domain}.enable")
        self.set_viewport(*self.viewport)
        self.send("Page.navigate", url=f"{self.server_url}/")
        self.wait_for(READY, "the ComfyUI frontend to load")
        self.evaluate("new Promise(r => setTimeout(r, 500))")  # extensions' setup() calls settle

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=15)
            self._process = None
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    # 2. protocol ---------------------------------------------------------------------------------------------
    def send(self, method: str, **params) -> dict:
        """One CDP command; events that arrive meanwhile are kept in :attr:`events`."""
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str, *, user_gesture: bool = False):
        """The JSON value of a JavaScript expression in the page (promises are awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True,
                           userGesture=user_gesture)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout_s: float | None = None):
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        last_error = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
                if value:
                    return value
            except RuntimeError as err:  # e.g. the page is still navigating
                last_error = err
            time.sleep(0.25)
        raise TimeoutError(f"waited {timeout_s or self.timeout_s:.0f} s for {what} (last error: {last_error})")

    def set_viewport(self, width: int, height: int) -> None:
        self.send("Emulation.setDeviceMetricsOverride", width=int(width), height=int(height), deviceScaleFactor=1,
                  mobile=False)

    # 3. the graph --------------------------------------------------------------------------------------------
    def load_workflow(self, workflow: dict) -> list[DrawnNode]:
        """Load a UI-format workflow as the user's "Open" does (a clean graph), then the nodes as drawn."""
        self.evaluate(f"app.loadGraphData({json.dumps(workflow)}, true, false)")
        return self.drawn_nodes()

    def drawn_nodes(self) -> list[DrawnNode]:
        """Every node of the current graph after a full redraw: the frontend's own bounds and sizes."""
        rows = self.evaluate("""(async () => {
            app.canvas.setDirty(true, true);
            app.canvas.draw(true, true);
            await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
            return app.graph.nodes.map(n => ({id: n.id, type: n.type, bounds: Array.from(n.getBounding()),
                size: Array.from(n.size), registered: !!LiteGraph.registered_node_types[n.type]}));
        })()""")
        return [DrawnNode(r["id"], r["type"], r["registered"], tuple(r["bounds"]), tuple(r["size"])) for r in rows]

    def graph_to_page(self, x: float, y: float) -> tuple[float, float]:
        """Page (CSS pixel) coordinates of a point in graph units under the current view."""
        return tuple(self.evaluate(f"""(() => {{
            const r = app.canvas.canvas.getBoundingClientRect();
            const [cx, cy] = app.canvas.ds.convertOffsetToCanvas([{x}, {y}]);
            return [r.left + cx, r.top + cy];
        }})()"""))

    def show_graph(self, margin: float = 40, max_side: int = 4000) -> tuple[float, float, float, float]:
        """Resize the page so the whole graph is drawn at scale 1 (smaller if it would exceed ``max_side``
        pixels); returns the canvas region ``(x, y, w, h)`` in page pixels that holds it."""
        nodes = self.drawn_nodes()
        x0 = min(n.bounds[0] for n in nodes) - margin
        y0 = min(n.bounds[1] for n in nodes) - margin
        x1 = max(n.bounds[0] + n.bounds[2] for n in nodes) + margin
        y1 = max(n.bounds[1] + n.bounds[3] for n in nodes) + margin
        left, top = self.evaluate("(() => { const r = app.canvas.canvas.getBoundingClientRect();"
                                  " return [r.left, r.top]; })()")
        scale = min(1.0, (max_side - left) / (x1 - x0), (max_side - top) / (y1 - y0))
        width, height = left + (x1 - x0) * scale, top + (y1 - y0) * scale
        self.set_viewport(max(width, 800), max(height, 600))
        self.evaluate(f"""(async () => {{
            await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
            app.canvas.resize?.();
            app.canvas.ds.scale = {scale};
            app.canvas.ds.offset = [{-x0}, {-y0}];
            app.canvas.setDirty(true, true);
            app.canvas.draw(true, true);
            await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
        }})()""")
        return left, top, width - left, height - top

    def screenshot(self, path: Path, clip: tuple[float, float, float, float] | None = None) -> Path:
        """Save a PNG of the page (or of ``clip`` = ``(x, y, w, h)`` in page pixels)."""
        params = {"format": "png"}
        if clip is not None:
            params["clip"] = {"x": clip[0], "y": clip[1], "width": clip[2], "height": clip[3], "scale": 1}
        data = base64.b64decode(self.send("Page.captureScreenshot", **params)["data"])
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    # 4. input ------------------------------------------------------------------------------------------------
    def click(self, x: float, y: float) -> None:
        """A left click at page coordinates, with the pointer moved there first (the canvas tracks hover)."""
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        self.send("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", buttons=1,
                  clickCount=1)
        self.send("Input.dispatchMouseEvent", type="mouseReleased", x=x, y=y, button="left", buttons=0,
                  clickCount=1)

    def click_and_choose_file(self, x: float, y: float, file: Path, timeout_s: float = 10) -> None:
        """Click something that opens a file chooser and pick ``file`` in it, as a user would."""
        self.send("Page.setInterceptFileChooserDialog", enabled=True)
        seen = len(self.events)
        self.click(x, y)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            opened = [e for e in self.events[seen:] if e["method"] == "Page.fileChooserOpened"]
            if opened:
                self.send("DOM.setFileInputFiles", files=[str(Path(file).resolve())],
                          backendNodeId=opened[0]["params"]["backendNodeId"])
                return
            self.evaluate("new Promise(r => setTimeout(r, 100))")
        raise TimeoutError(f"no file chooser opened after a click at ({x:.0f}, {y:.0f})")

    # 5. errors -----------------------------------------------------------------------------------------------
    def mark(self) -> int:
        """A point in the page's event record, for :meth:`problems` ``since``."""
        self.evaluate("0")  # collect the events that arrived so far
        return len(self.events)

    def problems(self, marker: str, since: int = 0) -> list[str]:
        """Console errors, uncaught exceptions and failed requests of the page (after :meth:`mark` ``since``) that
        involve ``marker`` (e.g. a pack's ``/extensions/<folder>/``) in their text, URL or stack, or in the
        initiator of a failed request (a module that a pack's script imports and that 404s names only the
        importing script)."""
        self.evaluate("0")
        initiators: dict[str, list[str]] = {}
        for event in self.events:
            if event["method"] == "Network.requestWillBeSent":
                init = event["params"]["initiator"]
                initiators[event["params"]["requestId"]] = [init.get("url", ""), *_stack_urls(init.get("stack"))]
        found = []
        for event in self.events[since:]:
            method, p = event["method"], event["params"]
            if method == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                text = f"{d.get('text', '')} {d.get('exception', {}).get('description', '')}"
                where = [d.get("url", ""), *_stack_urls(d.get("stackTrace"))]
            elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
                where = _stack_urls(p.get("stackTrace"))
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                e = p["entry"]
                text = e["text"]
                where = [e.get("url", ""), *_stack_urls(e.get("stackTrace")),
                         *initiators.get(e.get("networkRequestId", ""), [])]
            elif method == "Network.responseReceived" and p["response"]["status"] >= 400:
                text = f"HTTP {p['response']['status']} for {p['response']['url']}"
                where = [p["response"]["url"], *initiators.get(p["requestId"], [])]
            elif method == "Network.loadingFailed" and not p.get("canceled"):
                text = f"request failed: {p.get('errorText')}"
                where = initiators.get(p["requestId"], [])
            else:
                continue
            if any(marker in s for s in (text, *where)):
                found.append(f"{method}: {text.strip()} [{', '.join(w for w in where if w)}]")
        return list(dict.fromkeys(found))


def _stack_urls(stack: dict | None) -> list[str]:
    urls = []
    while stack:
        urls += [frame.get("url", "") for frame in stack.get("callFrames", [])]
        stack = stack.get("parent")
    return urls
