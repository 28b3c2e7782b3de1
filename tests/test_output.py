"""The shared terminal and JSON helpers."""

import io
import json
import math
from dataclasses import dataclass

import click
import numpy as np

from kvbench.export.json import write_json
from kvbench.jsonable import to_jsonable
from kvbench.output.terminal import aligned_lines, display_width, estimate
from kvbench.theory import Stability


def test_values_and_notes_start_in_one_column_despite_styles_and_combining_marks():
    lines = aligned_lines(
        [
            ("b̄", "0.0372 s", "note"),
            ("μ (stable rate)", click.style("3.263", bold=True), "n2"),
            ("x", "1"),
        ]
    )
    plain = [click.unstyle(line) for line in lines]
    assert plain[0] == "  b̄:                0.0372 s  note"
    assert plain[1] == "  μ (stable rate):  3.263     n2"
    assert plain[2] == "  x:                1"
    assert display_width(plain[0][: plain[0].index("note")]) == display_width(
        plain[1][: plain[1].index("n2")]
    )


def test_estimate_shows_uncertainty_only_when_there_is_one():
    assert estimate(3.26321, 0.0, "req/s") == "3.263 req/s"
    assert estimate(13.4291, 0.0912, "req/s") == "13.429 ± 0.091 req/s"
    assert estimate(math.nan) == "n/a"


@dataclass
class _Record:
    rate: np.float64
    count: np.int64
    arr: np.ndarray
    verdict: Stability
    missing: float


def test_json_handles_numpy_dataclasses_enums_and_nan():
    record = _Record(np.float64(1.5), np.int64(3), np.array([1, 2]), Stability.STABLE, math.nan)
    assert to_jsonable(record) == {
        "rate": 1.5,
        "count": 3,
        "arr": [1, 2],
        "verdict": "STABLE",
        "missing": None,
    }
    out = io.StringIO()
    write_json({"a": record}, stream=out)
    assert json.loads(out.getvalue())["a"]["count"] == 3


def test_json_writes_a_file(tmp_path):
    write_json({"replicas": np.int64(18)}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"replicas": 18}
