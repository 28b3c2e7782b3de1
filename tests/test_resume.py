"""`kvbench compare --resume DIR`: a comparison interrupted mid-search and resumed ends with the
bracket, probes and costs of an uninterrupted run with the same seed, having run only the
probes the interrupted one had not judged; a different configuration is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvbench.benchmark import search
from kvbench.benchmark.compare import run_compare
from kvbench.benchmark.compare_config import CompareConfig
from kvbench.cli import cli

BACKENDS = ["sim:trtllm", "sim:sglang"]
SEED = 2


class _Observer:
    """Raises KeyboardInterrupt (as Ctrl-C or SIGTERM would, kvbench.interrupt) at the first
    queue sample after `after` probes were judged: mid-run of the next probe."""

    def __init__(self, after: int | None = None):
        self.after = after
        self.judged = 0

    def engine_started(self, *a): ...
    def phase(self, *a): ...
    def engine_finished(self, *a): ...

    def sample(self, label, sample):
        if self.after is not None and self.judged >= self.after:
            raise KeyboardInterrupt

    def probe_finished(self, label, rate, verdict, spent, budget):
        self.judged += 1


def _config(root: Path) -> CompareConfig:
    # resuming replays judged open-loop probes (a bounded-backlog probe is one run: it reruns)
    return CompareConfig(backends=BACKENDS, seed=SEED, output_root=root, method="open-loop")


def _searches(directory: Path) -> list[dict]:
    return [
        json.loads(p.read_text())["search"] for p in sorted(directory.glob("engines/*/engine.json"))
    ]


def _runs_written(monkeypatch) -> list[Path]:
    """Every run directory the search writes from now on."""
    written: list[Path] = []
    real = search.execute_run

    def counting(backend, workload, spec, **options):
        written.append(Path(options["output"]))
        return real(backend, workload, spec, **options)

    monkeypatch.setattr(search, "execute_run", counting)
    return written


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    directory = run_compare(_config(tmp_path_factory.mktemp("full")), _Observer())
    assert not list(directory.glob("engines/*/unfinished-*"))  # nothing set aside unresumed
    return directory


def test_resumed_compare_matches_an_uninterrupted_one(uninterrupted, tmp_path, monkeypatch):
    directory = run_compare(_config(tmp_path), _Observer(after=1))
    first = json.loads(next(directory.glob("engines/0-*/engine.json")).read_text())
    assert first["status"] == "interrupted" and len(first["search"]["probes"]) == 1
    # the probe after the judged one was cut off mid-run
    kept_runs = {directory / r for r in [first["search"]["probes"][0]["run_dir"]]}
    engine_dir = directory / "engines" / "0-sim-trtllm"
    assert (engine_dir / "probe-01" / "header.json").is_file()
    before = {
        p: (p.stat().st_mtime_ns, p.read_bytes())
        for r in engine_dir.glob("probe-00*")
        for p in r.iterdir()
    }

    written = _runs_written(monkeypatch)
    assert run_compare(_config(tmp_path), _Observer(), resume=directory) == directory

    resumed, full = _searches(directory), _searches(uninterrupted)
    for r, f in zip(resumed, full, strict=True):
        assert (r["lower"], r["upper"], r["converged"]) == (f["lower"], f["upper"], f["converged"])
        assert r["lower"] is not None and r["upper"] is not None
        assert [
            (p["rate"], p["verdict"], p["extensions"], p["engine_seconds"]) for p in r["probes"]
        ] == [(p["rate"], p["verdict"], p["extensions"], p["engine_seconds"]) for p in f["probes"]]
        assert r["engine_seconds"] == pytest.approx(f["engine_seconds"])
    # only what was not judged ran again: the first engine's probe 1 was replayed, untouched
    assert all(p.stat().st_mtime_ns == m and p.read_bytes() == b for p, (m, b) in before.items())
    assert not kept_runs & set(written)
    assert not any(w.parent == engine_dir and w.name.startswith("probe-00") for w in written)
    # every run the final searches judged that was not kept was written by the resumed search
    final_trtllm = {directory / p["run_dir"] for p in resumed[0]["probes"]} - kept_runs
    assert final_trtllm <= set(written)
    # the run cut off mid-probe is kept aside, no longer part of the search
    assert (engine_dir / "unfinished-1" / "probe-01" / "header.json").is_file()
    header = json.loads((directory / "compare.json").read_text())
    assert header["interrupted"] is False and len(header["resumed"]) == 1


def _cli(*args: str):
    return CliRunner().invoke(
        cli, ["compare", "--backends", ",".join(BACKENDS), "--method", "open-loop", *args]
    )


def test_resume_refuses_a_different_configuration(uninterrupted):
    r = _cli("--seed", str(SEED + 1), "--resume", str(uninterrupted), "--no-progress")
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"error: --resume {uninterrupted}")
    assert "--seed differs" in r.stderr and f"seed {SEED + 1}" in r.stderr


def test_resuming_a_finished_comparison_runs_nothing(uninterrupted, monkeypatch):
    written = _runs_written(monkeypatch)
    before = _searches(uninterrupted)
    r = _cli("--seed", str(SEED), "--resume", str(uninterrupted))
    assert r.exit_code == 0, r.output
    assert written == [] and _searches(uninterrupted) == before
    # off a terminal the progress is plain lines; a kept engine says it is done
    assert "sim:trtllm (1/2): done" in r.stderr
