"""The raw files a compare run writes, and reading them back.

    DIR/compare.json                      what was asked: name, command, config, versions, banner
    DIR/engines/<slug>/engine.json        what one engine did: status, profile, b̄, theory, search
    DIR/engines/<slug>/<run>/             one run directory per calibration run and probe

`kvbench/benchmark/compare.py` writes these as it goes (each JSON file replaced atomically), so
an interrupted compare leaves a directory this module can still read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kvbench import validate
from kvbench.errors import KvbenchError
from kvbench.jsonable import dumps

COMPARE_FILE = "compare.json"
ENGINE_FILE = "engine.json"
ENGINES_DIR = "engines"
RAW_KIND = "kvbench.compare.raw"
RAW_VERSION = 1


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` in one step, so a reader (or a crash) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(data) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    return validate.input_json_object(path, missing="missing")


def is_compare_dir(directory: Path) -> bool:
    return (directory / COMPARE_FILE).is_file()


def read_compare(directory: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """compare.json and every engine's engine.json, in the order the engines were asked for
    (compare.json's `engines`: label, backend, kind, replicas, slug)."""
    header = read_json(directory / COMPARE_FILE)
    if header.get("kind") != RAW_KIND:
        raise KvbenchError(f"{directory / COMPARE_FILE}: not a kvbench compare directory")
    if header.get("version") != RAW_VERSION:
        raise KvbenchError(
            f"{directory / COMPARE_FILE}: raw format version {header.get('version')!r} "
            f"is not supported (this kvbench reads {RAW_VERSION})"
        )
    engines = []
    for asked in header.get("engines", []):
        path = directory / ENGINES_DIR / asked["slug"] / ENGINE_FILE
        if path.is_file():
            engines.append(read_json(path))
        else:  # interrupted before this engine started: its row says so
            engines.append(
                dict(asked, status="interrupted", error="not started (compare was interrupted)")
            )
    return header, engines


class EngineRecord:
    """The raw record of one engine (engine.json), rewritten after every step."""

    def __init__(
        self, directory: Path, asked: dict[str, Any], previous: dict[str, Any] | None = None
    ):
        """`previous`: what an interrupted attempt recorded (resuming), kept and built on."""
        self.directory = directory / ENGINES_DIR / asked["slug"]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = dict(previous or asked, status="running", error=None)
        self.save()

    def save(self) -> None:
        write_json_atomic(self.directory / ENGINE_FILE, self.data)

    def relative(self, path: Path, root: Path) -> str:
        return path.relative_to(root).as_posix()
