"""Static figures for slides: each plot of the HTML report as PNG and SVG, in DIR/figures/.

plotly renders static images through kaleido, which drives a headless Chrome or Chromium; both
are optional (`pip install 'kvbench[figures]'` and a browser on the machine), so they are asked
for only when figures are, and their absence is one line naming what to install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kvbench.errors import KvbenchError
from kvbench.export import html
from kvbench.report.build import Report

FIGURES_DIR = "figures"
FORMATS = ("png", "svg")
# Slide-sized, at twice the pixels for a sharp PNG on a projector.
WIDTH, HEIGHT, SCALE = 1280, 640, 2


def check() -> None:
    """Refuse --figures in one line when kaleido is not installed (before anything is measured)."""
    # plotly imports kaleido itself; looked up here to fail early and clearly
    if importlib.util.find_spec("kaleido") is None:
        raise KvbenchError(
            "--figures needs kaleido: pip install 'kvbench[figures]' (and Chrome or Chromium "
            "on this machine)"
        )


def write(report: Report, directory: Path) -> list[Path]:
    """Write every plot of `report` as DIR/figures/<plot>.png and .svg; returns the paths."""
    import plotly.io as pio

    check()
    out = directory / FIGURES_DIR
    out.mkdir(exist_ok=True)
    figs, paths, scales = [], [], []
    for name, fig in html.figures(report):
        for fmt in FORMATS:
            figs.append(fig)
            paths.append(out / f"{name}.{fmt}")
            scales.append(SCALE if fmt == "png" else 1)  # an SVG is drawn at its size
    try:
        # one browser for every figure: starting Chromium costs seconds, a figure much less
        pio.write_images(figs, paths, scale=scales, width=WIDTH, height=HEIGHT)
    except Exception as err:  # kaleido's errors name no common type; a missing browser among them
        message = " ".join(str(err).split()) or type(err).__name__
        raise KvbenchError(
            f"{out}: static figures failed ({message[:200]}); kaleido needs Chrome or "
            "Chromium (e.g. apt-get install chromium, or BROWSER_PATH=…)"
        ) from None
    return paths
