"""An attached engine's settings are never silently assumed: each is read, given, inferred from
the engine's gauges under saturation, or assumed, and the report says which."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from emulator_helpers import emulator_process

from kvbench.backends import settings
from kvbench.backends.base import DiscoveredProfile, QueueSample
from kvbench.backends.prometheus import Metrics
from kvbench.backends.vllm import build_profile
from kvbench.cli import cli
from kvbench.engine_theory import LengthLaw, engine_aware_mu
from kvbench.errors import KvbenchError
from kvbench.profile import IterationTimeModel
from kvbench.workload import load_workload

# vLLM 0.32's cache_config_info, as an engine started without --max-num-seqs exposes it
VLLM_METRICS = (
    "# TYPE vllm:cache_config_info gauge\n"
    'vllm:cache_config_info{block_size="16",enable_prefix_caching="True",'
    'kv_cache_size_tokens="2048",num_gpu_blocks="128"} 1.0\n'
)


def _attached_vllm() -> DiscoveredProfile:
    return build_profile(Metrics.parse(VLLM_METRICS, "http://e/metrics"), {}, "none")


def test_what_vllm_does_not_expose_is_marked_assumed_and_what_it_does_read():
    kinds = {row["setting"]: row["kind"] for row in settings.table(_attached_vllm())}
    assert kinds == {
        "kv_tokens": "read",
        "block_size": "read",
        "max_running": "assumed",
        "token_budget": "assumed",
        "chunk_size": "assumed",
    }


def test_given_settings_replace_what_was_read_or_assumed_and_say_so():
    given = settings.parse_given(["max_running=4", "vllm:token_budget=8_192", "b:block_size=32"])
    assert given == {
        None: {"max_running": 4},
        "vllm": {"token_budget": 8192},
        "b": {"block_size": 32},
    }
    found = settings.apply_given(_attached_vllm(), settings.for_label(given, "vllm"))
    assert (found.profile.max_running, found.profile.token_budget) == (4, 8192)
    rows = {r["setting"]: r for r in settings.table(found)}
    assert rows["max_running"]["kind"] == "given"
    assert "replaces 256 (assumed: vLLM default --max-num-seqs" in rows["max_running"]["source"]
    assert rows["kv_tokens"]["kind"] == "read"


@pytest.mark.parametrize(
    "value, message",
    [
        ("max_running", r"expected \[LABEL:\]KEY=VALUE"),
        ("max_seqs=4", "KEY one of kv_tokens, max_running"),
        ("max_running=four", "max_running must be a whole number of requests"),
        ("max_running=0", "--engine-setting max_running"),
    ],
)
def test_a_bad_setting_is_a_one_line_error(value, message):
    with pytest.raises(KvbenchError, match=message):
        settings.parse_given([value])


def _samples(running: list[int], waiting: int, kv_usage: float | None) -> list[QueueSample]:
    return [
        QueueSample(0.25 * i, 50, waiting=waiting, running=r, kv_usage=kv_usage)
        for i, r in enumerate(running)
    ]


def test_a_running_count_pinned_below_an_assumed_cap_while_requests_wait_is_the_cap():
    found = _attached_vllm()
    cap = settings.pinned_running(_samples([3] + [4] * 39, waiting=120, kv_usage=0.09))
    assert cap == settings.RunningCap(value=4, share=39 / 40, waiting=120, kv_usage=0.09)
    inferred, flags = settings.check_running_cap(found, cap, "the probe at 40 req/s")
    assert flags == [] and inferred.profile.max_running == 4
    source = inferred.sources["max_running"]
    assert settings.kind(source) == "inferred"
    assert (
        "running pinned at 4 in 98% of the samples while up to 120 waited, KV ≤ 9% full" in source
    )


def test_no_cap_is_inferred_when_memory_binds_or_nothing_waits_or_no_kv_gauge():
    found = _attached_vllm()
    for samples in (
        _samples([4] * 40, waiting=120, kv_usage=0.97),  # memory full: memory binds
        _samples([4] * 40, waiting=0, kv_usage=0.2),  # nothing waits: not saturated
        _samples([4, 5, 6, 7] * 10, waiting=30, kv_usage=0.5),  # the count wanders
    ):
        after, flags = settings.check_running_cap(found, settings.pinned_running(samples), "p")
        assert after.profile.max_running == 256 and flags == []
    # without a KV gauge memory cannot be ruled out: flagged, not changed
    after, flags = settings.check_running_cap(
        found, settings.pinned_running(_samples([4] * 40, 120, None)), "p"
    )
    assert after.profile.max_running == 256 and "does not look binding" in flags[0]


def test_more_running_than_the_cap_allows_is_flagged_not_fixed():
    found = settings.apply_given(_attached_vllm(), {"max_running": 8})
    cap = settings.pinned_running(_samples([12] * 40, waiting=5, kv_usage=0.4))
    after, flags = settings.check_running_cap(found, cap, "the probe at 9 req/s")
    assert after is found
    assert flags == [
        "max_running = 8 (given: --engine-setting max_running=8; replaces 256 (assumed: vLLM "
        "default --max-num-seqs on GPUs < 70 GiB (not exposed by the server))) is contradicted "
        "by the engine's gauges: 12 requests ran at once in the probe at 9 req/s"
    ]


def test_compare_infers_a_running_cap_the_engine_does_not_expose(tmp_path):
    """A vLLM started with --max-num-seqs 4 (here its emulator, --max-running 4) exposes no cap;
    kvbench assumed vLLM's 256 and blamed the model for the gap. Now the overloaded probe's
    gauges give the cap, and the engine-aware μ with it lands near the measured boundary."""
    workload = "uniform:1-32,1-32"
    with emulator_process(
        "--engine", "vllm", "--max-running", "4", "--kv-tokens", "2048", "--time-scale", "2"
    ) as url:
        result = CliRunner().invoke(
            cli,
            [
                "compare",
                "--backends",
                "vllm",
                "--url",
                f"vllm={url}",
                "--time-scale",
                "2",
                "--workload",
                workload,
                "--precision",
                "0.2",
                "--no-progress",
                "--json",
                "--output-dir",
                str(tmp_path),
            ],
            catch_exceptions=False,
        )
    (engine,) = json.loads(result.stdout)["engines"]
    assert result.exit_code == 0, engine["error"]
    rows = {r["setting"]: r for r in engine["settings"]}
    assert rows["max_running"]["value"] == 4 and rows["max_running"]["kind"] == "inferred"
    assert rows["token_budget"]["kind"] == "assumed" and rows["kv_tokens"]["kind"] == "read"
    lo, hi = engine["boundary"]["lower"], engine["boundary"]["upper"]
    aware = engine["theory"]["mu_engine_aware"]
    assert lo is not None and hi is not None
    assert aware == pytest.approx((lo + hi) / 2, rel=0.15)
    # with the assumed cap the same theory would have missed by far more
    law = LengthLaw.from_workload(load_workload(workload))
    profile = settings.apply_given(_attached_vllm(), {}).profile.replace(
        iteration_time=IterationTimeModel.constant(engine["batch_time"]["value"])
    )
    assumed_mu = engine_aware_mu(profile, law).mu
    assert assumed_mu > 3 * hi
