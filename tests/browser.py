"""Open a page in headless Chromium (Debian's `chromium` package) and return its DOM after
scripts ran, with every message the page wrote to the console. Network is disabled, so a page
that needs it fails visibly.

Without Chromium the browser tests are skipped, with the reason, so the README's test command
passes on a machine that has only Python and cargo. CI makes them required: under `CI=true`
(set by most CI services) or `KVBENCH_REQUIRE_BROWSER=1` (set by .ci/run) a missing Chromium
fails them instead."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_CONSOLE = re.compile(r":CONSOLE[^\]]*\] (.*)")


@dataclass
class PageLoad:
    dom: str
    console: list[str]


def browser_required() -> bool:
    return os.environ.get("KVBENCH_REQUIRE_BROWSER") == "1" or os.environ.get("CI") == "true"


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    reason = "headless Chromium not found (apt-get install -y chromium; see .ci/run)"
    if browser_required():
        pytest.fail(f"{reason}, and CI=true or KVBENCH_REQUIRE_BROWSER=1 requires it")
    pytest.skip(f"{reason}; set KVBENCH_REQUIRE_BROWSER=1 to make this a failure")


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
