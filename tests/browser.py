"""Open a page in headless Chromium (Debian's `chromium` package) and return its DOM after
scripts ran, with every message the page wrote to the console. Network is disabled, so a page
that needs it fails visibly."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_CONSOLE = re.compile(r":CONSOLE[^\]]*\] (.*)")


@dataclass
class PageLoad:
    dom: str
    console: list[str]


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "headless Chromium is needed: apt-get install -y chromium (see .ci/run)"
    return exe


def load(page: Path, tmp: Path) -> PageLoad:
    result = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp / 'chromium-profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return PageLoad(result.stdout, _CONSOLE.findall(result.stderr))
