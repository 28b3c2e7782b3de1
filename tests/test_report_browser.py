"""report.html in headless Chromium: no console message, every plot drawn, labels as text."""

from __future__ import annotations

import html
import re

from browser import load
from compare_fixture import make_compare_dir

from kvbench.export.compare_report import write_report

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


def test_reports_sharing_one_plotlyjs_render_offline_and_stay_small(tmp_path):
    """--shared-plotlyjs: plotly.js once in the directory the reports go into; each report.html
    loads it from there (offline, from a file:// page) and is a few hundred KB lighter per MB."""
    from kvbench.export.html import SHARED_PLOTLYJS

    first = make_compare_dir(tmp_path / "reports" / "a", labels=("trtllm",))
    second = make_compare_dir(tmp_path / "reports" / "b", labels=("sglang",))
    write_report(first)
    inline = (first / "report.html").stat().st_size
    for d in (first, second):
        write_report(d, shared_plotlyjs=True)
    library = tmp_path / "reports" / SHARED_PLOTLYJS
    assert library.is_file() and library.stat().st_size > 3_000_000
    for d in (first, second):
        page_file = d / "report.html"
        assert page_file.stat().st_size < inline - 3_000_000
        assert f'<script src="../{SHARED_PLOTLYJS}"></script>' in page_file.read_text()
        page = load(page_file, tmp_path)
        assert page.console == []
        assert 'class="main-svg"' in page.dom  # the plots drew with the shared library
