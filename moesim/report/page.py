"""The report page: one self-contained HTML file (plotly.js embedded, no network access).

Each figure's JSON sits in a ``<script type="application/json" data-figure="<div id>">`` element and is
drawn by a small script at the end of the page, so what the browser draws is exactly what a reader (or a
test) parses out of the file. JavaScript errors are caught and listed in ``#js-errors``; when every figure
is drawn the body gets ``data-render-status="done"``.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

CSS = """
*, *::before, *::after { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1280px; padding: 1.5rem clamp(.8rem, 3vw, 2rem) 4rem; color: #1d2330; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; } h2 { font-size: 1.25rem; margin-top: 2.4rem;
     border-bottom: 1px solid #dde1e8; padding-bottom: .3rem; }
p.lead { color: #4a5263; margin-top: 0; } .note { color: #4a5263; font-size: .93rem; max-width: 960px; }
td .note { font-size: inherit; }  /* a note inside a table cell: the cell's type, not larger */
table { border-collapse: collapse; font-size: .92rem; margin: .6rem 0 1rem; }
th, td { border-bottom: 1px solid #e4e7ec; padding: .35rem .7rem; text-align: right; vertical-align: top; }
th { background: #f4f6f9; font-weight: 600; } td:first-child, th:first-child { text-align: left; }
table.kv td:first-child { font-weight: 600; } table.kv td { text-align: left; }
.better { color: #12733a; font-weight: 600; } .worse { color: #b42318; } .baseline { color: #6b7280; }
.derived, .warn { background: #fff4e5; border: 1px solid #f5b55a; padding: .6rem .9rem; border-radius: 6px; }
.failed { background: #fdecec; border: 1px solid #e9a1a1; padding: .6rem .9rem; border-radius: 6px; }
.figure { min-height: 200px; } #js-errors { color: #b42318; white-space: pre-wrap; }
code { background: #f4f6f9; padding: 0 .25rem; border-radius: 3px; }
div.wide { max-width: 100%; overflow-x: auto; } table.params td:last-child, table.params th:last-child { text-align: left; }
table.text td, table.text th { text-align: left; }  /* rows of words (failed jobs): read from the left */
.verdict { background: #eef6ee; border: 1px solid #9ccf9c; padding: .7rem 1rem; border-radius: 6px;
           max-width: 960px; font-size: 1.02rem; } .verdict ul { margin: .4rem 0 0; padding-left: 1.2rem; }
.verdict li { margin-top: .3rem; }
th { hyphens: auto; }
@media (max-width: 1100px) { table { font-size: .8rem; } th, td { padding: .3rem .4rem; } }
"""

ERROR_HOOK = """
window.__moesimErrors = [];
window.__moesimShowErrors = function () {
  var el = document.getElementById('js-errors');
  if (el) { el.textContent = window.__moesimErrors.join('\\n'); el.hidden = window.__moesimErrors.length === 0; }
};
window.addEventListener('error', function (e) {
  var t = e.target, what = e.message || (t && (t.src || t.href)) || String(e);
  window.__moesimErrors.push('error: ' + what); window.__moesimShowErrors();
}, true);
window.addEventListener('unhandledrejection', function (e) {
  window.__moesimErrors.push('unhandled rejection: ' + e.reason); window.__moesimShowErrors();
});
"""

RENDER = """
(function () {
  var jobs = [];
  document.querySelectorAll('script[type="application/json"][data-figure]').forEach(function (el) {
    var div = document.getElementById(el.dataset.figure);
    try {
      var fig = JSON.parse(el.textContent);
      if (!fig.data || fig.data.length === 0) { throw new Error('figure ' + el.dataset.figure + ' has no data'); }
      jobs.push(Plotly.newPlot(div, fig.data, fig.layout,
        {responsive: true, displaylogo: false, toImageButtonOptions: {format: 'png', scale: 2}}));
    } catch (err) {
      window.__moesimErrors.push('figure ' + el.dataset.figure + ': ' + err); window.__moesimShowErrors();
    }
  });
  Promise.all(jobs).then(function () { document.body.dataset.renderStatus = 'done'; },
    function (err) { window.__moesimErrors.push('render: ' + err); window.__moesimShowErrors();
                     document.body.dataset.renderStatus = 'failed'; });
})();
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table cell; NaN/None as an em dash."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, float):
        text = f"{x:.{digits}g}"
        # 30,300 s, not 3.03e+04 s, and 1,990 s, not 1.99e+03 s (a saturated policy's mean turnaround):
        # significant digits, written out
        if "e+" in text and abs(x) < 1e15:
            return f"{float(text):,.0f}"
        return text
    return _esc(x)


def pct_text(x: float) -> str:
    """``|x|`` as a percentage with one decimal, more where that would read 100.0 without being it (a change
    of −99.97% is not −100%, which would take no time at all): ``99.97``, or ``> 99.99`` beyond."""
    text = f"{abs(x):.1f}"
    if text.startswith("100.") and abs(x) < 100.0:
        text = f"{abs(x):.2f}"
        if text.startswith("100."):
            text = "> 99.99"
    return text


def fmt_pct(x: float) -> str:
    """A signed percentage, green when negative (lower is better), red when positive."""
    if x is None or not math.isfinite(x):
        return "—"
    cls = "better" if x < -0.05 else "worse" if x > 0.05 else ""
    sign = "−" if x < 0 else "+"
    text = pct_text(x)
    if text.startswith(">"):  # beyond −99.99 %: "< −99.99%"
        return f'<span class="{cls}">&lt; {sign}99.99%</span>' if x < 0 else f'<span class="{cls}">+{text}%</span>'
    return f'<span class="{cls}">{sign}{text}%</span>'


def table(df: pd.DataFrame, header: list[str], cells: list[list[str]], cls: str = "") -> str:
    """An HTML table from pre-formatted (already escaped) cells."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def kv_table(rows: list[tuple[str, str]]) -> str:
    """A two-column key/value table (values already escaped)."""
    body = "".join(f"<tr><td>{_esc(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def figure_block(name: str, fig: go.Figure) -> str:
    """The div a figure is drawn into and its JSON."""
    text = fig.to_json(validate=True, pretty=False).replace("</", "<\\/")
    return (f'<div class="figure" id="fig-{name}"></div>\n'
            f'<script type="application/json" data-figure="fig-{name}">{text}</script>')


def data_block(name: str, obj: Any) -> str:
    """Machine-readable data embedded in the page (e.g. the headline table)."""
    text = json.dumps(obj, allow_nan=False, default=str).replace("</", "<\\/")
    return f'<script type="application/json" id="data-{name}">{text}</script>'


def page(title: str, body: str) -> str:
    """The whole document: plotly.js inline, the body, the render script."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n"
        f"<script>{ERROR_HOOK}</script>\n"
        f"<script>{get_plotlyjs()}</script>\n"
        "</head>\n<body>\n"
        "<noscript><p class=\"failed\">The figures need JavaScript (plotly.js, embedded in this file; "
        "no network access needed).</p></noscript>\n"
        "<pre id=\"js-errors\" hidden></pre>\n"
        f"{body}\n<script>{RENDER}</script>\n</body>\n</html>\n"
    )
