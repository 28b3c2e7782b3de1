"""Static figures beside the HTML report: each plot as PNG and SVG, rendered by kaleido through
the machine's Chromium (the browser the HTML report's own test uses)."""

from __future__ import annotations

import importlib.util
import struct
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner
from compare_fixture import make_compare_dir

from kvbench.cli import cli

PLOTS = ("plot-boundary", "plot-queue", "plot-kv", "plot-latency")


@pytest.mark.skipif(importlib.util.find_spec("kaleido") is None, reason="kvbench[figures]")
def test_report_figures_are_the_html_plots_as_png_and_svg(tmp_path):
    directory = make_compare_dir(tmp_path / "cmp")
    r = CliRunner().invoke(cli, ["report", str(directory), "--figures"])
    assert r.exit_code == 0, r.output
    html = (directory / "report.html").read_text()
    for name in PLOTS:
        assert f'id="{name}"' in html
        png = (directory / "figures" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])
        assert (width, height) == (2560, 1280)  # 1280×640 at scale 2
        svg = ET.fromstring((directory / "figures" / f"{name}.svg").read_text())
        assert svg.tag.endswith("svg") and svg.get("width") == "1280"
    # the engines' names are drawn in the figure, not only in the HTML around it
    assert "trtllm" in (directory / "figures" / "plot-boundary.svg").read_text()
    assert sorted(p.name for p in (directory / "figures").iterdir()) == sorted(
        f"{n}.{f}" for n in PLOTS for f in ("png", "svg")
    )


def test_figures_without_kaleido_are_one_line_before_any_measurement(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "kaleido" else real(name, *a)
    )
    r = CliRunner().invoke(
        cli, ["compare", "--backends", "sim:trtllm", "--figures", "--output-dir", str(tmp_path)]
    )
    assert r.exit_code == 2 and r.stderr.startswith("error: --figures needs kaleido")
    assert r.stderr.count("\n") == 1 and not list(tmp_path.iterdir())
