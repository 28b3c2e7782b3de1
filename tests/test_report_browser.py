"""report.html in headless Chromium: no console message, every plot drawn, labels as text."""

from __future__ import annotations

import html
import re

from browser import load
from compare_fixture import make_compare_dir

from kvbench.report import write_report

EVIL = '<script>console.log("injected")</script><b>bold</b>'


def test_console_errors_are_detected(tmp_path):
    """The check below must be able to fail: a page that throws is caught."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    assert any("undefinedFunction" in m for m in load(page, tmp_path).console)


def test_report_renders_offline_without_console_errors(tmp_path):
    d = make_compare_dir(tmp_path / "r", labels=("trtllm", EVIL), failed="vllm")
    write_report(d)
    page = load(d / "report.html", tmp_path)
    assert page.console == []  # an injected <script> would log; plotly would log on failure
    for plot in ("plot-boundary", "plot-queue", "plot-kv", "plot-latency"):
        start = page.dom.index(f'id="{plot}"')
        end = page.dom.find('id="plot-', start + 1)
        drawn = page.dom[start : end if end > 0 else None]
        assert 'class="main-svg"' in drawn, plot
        assert re.search(r'class="(scatterlayer|trace)', drawn), plot
    legend = [
        html.unescape(t) for t in re.findall(r'class="legendtext"[^>]*>(.*?)</text>', page.dom)
    ]
    # shown as the literal text, tags and all, not parsed as markup
    assert any(EVIL in re.sub(r"<[^>]*tspan[^>]*>", "", t) for t in legend), legend
    cell = re.search(r'data-engine="[^"]*">\s*<td>(.*?)<span', page.dom, re.S)
    assert cell
    assert "&lt;script&gt;" in page.dom and "<b>bold</b>" not in page.dom
