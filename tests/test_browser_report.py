"""report.html in headless Chromium: no JavaScript error, no network access, every figure drawn.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fd 3 in, fd 4 out,
NUL-terminated JSON), so the test sees every uncaught exception, console error and network request, and
takes a full-page screenshot (saved under ``$MOESIM_ARTIFACTS`` or the test's tmp dir). Skips when no
Chromium is installed (``apt-get install chromium``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from test_report_helpers import make_sweep

from moesim.report import build_report
from moesim.report.page import ERROR_HOOK, RENDER

CHROMIUM = next((p for p in (os.environ.get("MOESIM_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), "/usr/bin/chromium") if p and os.path.exists(p)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND",  # any network access fails (and is reported)
         "--remote-debugging-pipe"]

# CI (.ci/run) sets MOESIM_REQUIRE_CHROMIUM=1: there a missing chromium fails the test instead of skipping it
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("MOESIM_REQUIRE_CHROMIUM"),
                                reason="no chromium: apt-get install chromium to run the browser test of report.html")


def test_chromium_present() -> None:
    assert CHROMIUM is not None, "MOESIM_REQUIRE_CHROMIUM is set but no chromium was found"


class Browser:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, user_data_dir: Path) -> None:
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        def fds() -> None:  # the child reads commands on fd 3 and writes replies on fd 4
            # dup2 onto itself is a no-op that keeps close-on-exec (a script whose pipes are fds 3 and 4
            # handed chromium none): clear the flag explicitly
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            preexec_fn=fds, pass_fds=(), close_fds=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=1400, height=1000,
                  deviceScaleFactor=1, mobile=False)

    def _read(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while b"\0" not in self._buf:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, *, session: bool = False, timeout_s: float = 60.0, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its reply (events meanwhile are kept in ``events``)."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read(timeout_s)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        r = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        return r["result"].get("value")

    def open(self, url: str, timeout_s: float = 60.0) -> None:
        """Navigate and wait until the page says its figures are drawn (or failed)."""
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + timeout_s
        while self.evaluate("document.readyState + '/' + (document.body && document.body.dataset.renderStatus)") \
                not in ("complete/done", "complete/failed"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: figures not drawn within {timeout_s} s")
            time.sleep(0.2)

    def problems(self) -> list[str]:
        """Uncaught exceptions, console errors, error log entries, non-local requests, page-reported errors."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append("exception: " + p["exceptionDetails"].get("exception", {}).get("description", str(p)))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append("log: " + p["entry"]["text"])
            elif m == "Network.requestWillBeSent" and not p["request"]["url"].startswith(("file:", "data:", "about:")):
                out.append("network: " + p["request"]["url"])
        page_errors = self.evaluate("(window.__moesimErrors || []).join('\\n')")
        if page_errors:
            out.append("page: " + page_errors)
        return out

    def screenshot(self, path: Path) -> None:
        """A full-page PNG."""
        size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True,
                         clip=clip)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError):
            self.call("Browser.close", timeout_s=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._w)
        os.close(self._r)


FIGURE_STATE = """
Array.from(document.querySelectorAll('div.figure')).map(function (d) {
  return {id: d.id, svg: d.querySelectorAll('svg.main-svg').length, traces: d.querySelectorAll('g.trace').length,
          marks: d.querySelectorAll('g.trace path, g.trace .point').length, width: d.getBoundingClientRect().width};
})
"""


# Everything that could collide, per figure: the toolbar (made visible, as on hover), the title, the subplot
# titles and other annotations, the legend, the axis titles and the tick labels; and the page's own width.
# Returns the pairs of elements whose boxes overlap by more than 1 px each way, and the page's overflow.
OVERLAPS = """
(function () {
  if (!document.getElementById('show-modebar')) {
    var st = document.createElement('style'); st.id = 'show-modebar';
    st.textContent = '.js-plotly-plot .plotly .modebar { opacity: 1 !important; }';
    document.head.appendChild(st);
  }
  function box(el, kind) { var r = el.getBoundingClientRect();
    return {kind: kind, text: (el.textContent || '').slice(0, 40), l: r.left, r: r.right, t: r.top, b: r.bottom}; }
  var out = {overlaps: [], page: {scroll: document.documentElement.scrollWidth, width: window.innerWidth}, figures: 0};
  document.querySelectorAll('div.figure').forEach(function (div) {
    out.figures += 1;
    var items = [];
    div.querySelectorAll('.modebar').forEach(function (e) { items.push(box(e, 'toolbar')); });
    div.querySelectorAll('.gtitle').forEach(function (e) { items.push(box(e, 'title')); });
    div.querySelectorAll('.annotation-text').forEach(function (e) { items.push(box(e, 'annotation')); });
    div.querySelectorAll('g.legend .bg').forEach(function (e) { items.push(box(e, 'legend')); });
    div.querySelectorAll('.g-xtitle text, .g-x2title text, .g-ytitle text, .g-y2title text').forEach(
      function (e) { items.push(box(e, 'axis title')); });
    div.querySelectorAll('.xtick text, .ytick text').forEach(function (e) { items.push(box(e, 'tick')); });
    items = items.filter(function (a) { return a.r - a.l > 0 && a.b - a.t > 0; });
    var fig = div.getBoundingClientRect();
    items.forEach(function (a) {
      if (a.l < fig.left - 1 || a.r > fig.right + 1) {
        out.overlaps.push({figure: div.id, a: a, b: {kind: 'figure edge'}});
      }
    });
    for (var i = 0; i < items.length; i++) for (var j = i + 1; j < items.length; j++) {
      var a = items[i], b = items[j];
      if (a.kind === 'tick' && b.kind === 'tick' && a.t !== b.t && a.l !== b.l) { continue; }
      var w = Math.min(a.r, b.r) - Math.max(a.l, b.l), h = Math.min(a.b, b.b) - Math.max(a.t, b.t);
      if (w > 1 && h > 1) { out.overlaps.push({figure: div.id, a: a, b: b}); }
    }
  });
  return out;
})()
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Any:
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def test_report_renders_without_errors(browser: Browser, tmp_path: Path) -> None:
    root = make_sweep(tmp_path / "sweep")
    html = build_report(root)
    browser.open(html.as_uri())
    assert browser.problems() == []
    assert browser.evaluate("document.body.dataset.renderStatus") == "done"
    figures = browser.evaluate(FIGURE_STATE)
    assert [f["id"] for f in figures] == ["fig-turnaround", "fig-ttft", "fig-throughput", "fig-slo", "fig-cdf",
                                          "fig-memory", "fig-timeline"]
    for f in figures:
        assert f["svg"] >= 1, f
        assert f["traces"] >= 1, f
        assert f["marks"] >= 1, f  # something is actually drawn
        assert f["width"] > 300, f
    out = Path(os.environ.get("MOESIM_ARTIFACTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "report.png"
    browser.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 50_000
    print(f"screenshot: {shot}")
    # the policy-settings table: its text column's header sits over its (left-aligned) text, not at the
    # far right of a wide column
    align = browser.evaluate("Array.from(document.querySelectorAll('table.params tr')).map(function (tr) {"
                             " return getComputedStyle(tr.lastElementChild).textAlign; })")
    assert align, "no policy-settings table"
    assert set(align) == {"left"}, align
    # a note inside a table cell (a derived GPU figure) is in the cell's type, not larger than it
    sizes = browser.evaluate("Array.from(document.querySelectorAll('td .note')).map(function (n) {"
                             " return [getComputedStyle(n).fontSize, getComputedStyle(n.closest('td')).fontSize]; })")
    assert sizes, "no note in a table cell"
    assert all(a == b for a, b in sizes), sizes
    # the failed jobs' overrides and messages are words: left-aligned, as are their headers
    align = browser.evaluate("Array.from(document.querySelectorAll('table.text td, table.text th')).map("
                             "function (c) { return getComputedStyle(c).textAlign; })")
    assert align, "no table of jobs without results"
    assert set(align) == {"left"}, align


def test_harness_catches_errors(browser: Browser, tmp_path: Path) -> None:
    """The checks above can fail: a figure without data, a throwing plot call and a network request are
    all reported."""
    page = tmp_path / "bad.html"
    page.write_text(
        f"<html><head><script>{ERROR_HOOK}</script><script>window.Plotly = {{newPlot: function () "
        "{ throw new Error('plot failed'); }};</script></head><body>"
        '<pre id="js-errors" hidden></pre><div class="figure" id="fig-a"></div><div class="figure" id="fig-b"></div>'
        '<script type="application/json" data-figure="fig-a">{"data": [], "layout": {}}</script>'
        '<script type="application/json" data-figure="fig-b">{"data": [{"y": [1]}], "layout": {}}</script>'
        '<img src="https://cdn.example.invalid/x.png">'
        f"<script>{RENDER}</script></body></html>"
    )
    browser.open(page.as_uri())
    problems = "\n".join(browser.problems())
    assert "figure fig-a has no data" in problems
    assert "plot failed" in problems
    assert "network: https://cdn.example.invalid/x.png" in problems
    assert browser.evaluate("document.getElementById('js-errors').hidden") is False


@pytest.mark.parametrize(("width", "gpu", "derived"), [(900, "h200", False), (1400, "h200", False),
                                                       (900, "h200-nvl-custom-node-a", False), (900, "h200", True)])
def test_nothing_overlaps_at_width(browser: Browser, tmp_path: Path, width: int, gpu: str, derived: bool) -> None:
    """At 900 and 1400 px: no title, subplot title, legend, axis title or tick label under plotly's toolbar
    or over another, none past its figure's edge, and no horizontal scrolling of the page. Series
    names are long here (the seed-1 jobs claim another GPU, so every series is “policy · gpu=…”)."""
    import json as _json

    from moesim.io import write_json

    root = make_sweep(tmp_path / "sweep", derived=derived)  # derived: each title gets a "not measured" line
    for d in root.iterdir():
        if (d / "summary.json").exists():
            s = _json.loads((d / "summary.json").read_text())
            if s["seed"] == 1:
                s["gpu"] = gpu  # a long name (a user's GPU file) pushes the memory figure's plot right
                write_json(d / "summary.json", s)
    html = build_report(root)
    browser.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=1000,
                 deviceScaleFactor=1, mobile=False)
    try:
        browser.open(html.as_uri())
        assert browser.problems() == []
        state = browser.evaluate(OVERLAPS)
        out = Path(os.environ.get("MOESIM_ARTIFACTS") or tmp_path)
        out.mkdir(parents=True, exist_ok=True)
        browser.screenshot(out / f"report_{width}px_{gpu}{'_derived' if derived else ''}.png")
    finally:
        browser.call("Emulation.setDeviceMetricsOverride", session=True, width=1400, height=1000,
                     deviceScaleFactor=1, mobile=False)
    assert state["figures"] == 7
    assert state["page"]["scroll"] <= width, state["page"]
    assert [(o["figure"], o["a"]["kind"], o["a"].get("text"), o["b"]["kind"], o["b"].get("text"))
            for o in state["overlaps"]] == []
