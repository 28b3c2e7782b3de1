"""The browser tests without Chromium: skipped with the reason on a developer's machine (the
README's test command must pass there), failed under CI, where they are required."""

from __future__ import annotations

import shutil

import browser
import pytest


@pytest.fixture
def no_chromium(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("KVBENCH_REQUIRE_BROWSER", raising=False)
    return monkeypatch


def test_skipped_with_the_reason_on_a_machine_without_chromium(no_chromium):
    with pytest.raises(pytest.skip.Exception, match="headless Chromium not found"):
        browser.chromium()


@pytest.mark.parametrize("var, value", [("CI", "true"), ("KVBENCH_REQUIRE_BROWSER", "1")])
def test_required_under_ci(no_chromium, var, value):
    no_chromium.setenv(var, value)
    with pytest.raises(pytest.fail.Exception, match="requires it"):
        browser.chromium()
