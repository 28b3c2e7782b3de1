"""The bounded-backlog probe over HTTP: the Rust driver keeps K requests sent and not started
against each emulator (measured from the driver's own events), `kvbench boundary` brackets the
same rate over HTTP as on the simulator, and an engine that merges tokens into chunks without a
running count is refused."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest
from aiohttp import web
from emulator_helpers import serving

from kvbench.backends.amended import AmendedProfile
from kvbench.backends.backlog import BIN_WIDTH, RequestStream
from kvbench.backends.registry import resolve_backend
from kvbench.backends.vllm import VllmBackend
from kvbench.benchmark.compare_config import EMBEDDED
from kvbench.errors import KvbenchError
from kvbench.workload import load_workload

K = 32


@pytest.mark.parametrize("replicas", [1, 2])
def test_the_driver_keeps_k_sent_and_not_started_per_replica(replicas):
    """Against the vLLM emulator (the boundary tests below check the other two the same way,
    over whole probes): one, and two behind round-robin dispatch, each kept at K."""
    k = K // replicas  # the same client load either way on a 2-core machine
    backend = resolve_backend(
        "emulate:vllm",
        kv_tokens=EMBEDDED.kv_tokens,
        time_scale=EMBEDDED.time_scale,
        replicas=replicas,
    )
    try:
        chunk = backend.discover_profile().profile.chunk_size  # as the search does first
        run = backend.bounded_backlog(load_workload(EMBEDDED.workload), backlog=k, seed=3)
        try:
            parts = [run.advance(t) for t in (4.0, 8.0)]
        finally:
            run.close()
    finally:
        backend.close()
    assert backend.kind == "emulated" and chunk >= 32
    assert [p.first for p in parts] == [0, int(4.0 / BIN_WIDTH)]
    backlog = np.concatenate([p.backlog for p in parts])
    starts = np.concatenate([p.starts for p in parts])
    work = np.concatenate([p.work for p in parts])
    assert backlog.size == int(8.0 / BIN_WIDTH)
    # after the first bin, every bin end: K per replica sent and not started, within one
    # top-up each
    assert np.abs(backlog[1:] - k * replicas).max() <= replicas, backlog
    # the engine's own mean iteration time (its vllm:iteration_tokens_total count, as the real
    # engine exposes it): a decoding request gets one token an iteration, so its tokens' mean
    # spacing over the same window is the same time, stretched only by its preempted stretches
    gaps = [
        np.diff([t for t in r.token_times if t >= 2.0])
        for r in (run.records if replicas == 1 else run.runs[0].records)
    ]
    spacing = float(np.median(np.concatenate([g for g in gaps if g.size])))
    assert 0.8 * spacing <= run.iteration_time(2.0) <= 1.25 * spacing
    if replicas == 1:
        # the tokens of the requests that started: the stream's own, request by request
        s, o = RequestStream(load_workload(EMBEDDED.workload), 3).draw()
        began = run._start < 8.0  # NaN: not started
        assert began.sum() == starts.sum()
        assert sum(p.start_prompt.sum() for p in parts) == s[began[: s.size]].sum()
        assert sum(p.start_output.sum() for p in parts) == o[began[: o.size]].sum()
    if replicas > 1:
        per_replica = [np.count_nonzero(~np.isnan(r._start)) for r in run.runs]
        # both kept busy (not equally: two emulators and the client share 2 cores, and a
        # starved emulator serves less)
        assert min(per_replica) > 0.25 * sum(per_replica), per_replica
    # the engine ran saturated throughout: every bin served work and started requests, and
    # the requests that started are the ones the client sent beyond its first K
    assert (work > 0).all() and (starts[1:] > 0).all()
    finishes = np.concatenate([p.finishes for p in parts])
    assert 0 < finishes.sum() <= starts.sum()
    # the engine's own waiting gauge saw the backlog (each emulator serves one)
    waiting = np.concatenate([p.waiting for p in parts if p.waiting is not None])
    assert waiting.size == backlog.size and waiting[8:].max() >= K // 2, waiting
    assert backend.has_backlog_probe


def _boundary(backend: str, *extra: str) -> dict:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvbench",
            "boundary",
            "--backend",
            backend,
            "--workload",
            EMBEDDED.workload,
            "--kv-tokens",
            str(EMBEDDED.kv_tokens),
            # the first look with an estimate (10 engine-s) is ~8% wide: the search stops there
            "--precision",
            "0.15",
            "--max-engine-seconds",
            "60",
            "--seed",
            "5",
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm"])
def test_boundary_over_http_brackets_what_the_simulator_does(engine):
    """The default method over HTTP is the bounded backlog, and its bracket overlaps the
    simulated engine's (same scheduler, A100 iteration model, M and workload)."""
    emulated = _boundary(f"emulate:{engine}", "--time-scale", str(EMBEDDED.time_scale))
    simulated = _boundary(f"sim:{engine}")
    for r in (emulated, simulated):
        assert r["extras"]["method"] == "backlog" and r["reached"], r
    k = emulated["extras"]["backlog"]
    assert emulated["emulated"] is True and k >= K  # the HTTP floor of the rule
    # the client kept K at every bin end of the run (one top-up of slack)
    lo, hi = emulated["extras"]["backlog_kept"]
    assert k - 1 <= lo <= hi <= k + 1
    # b̄ measured in a burst first: an HTTP engine reports no iteration time
    assert 0.003 < emulated["extras"]["batch_time"]["value"] < 0.2
    (elo, ehi), (slo, shi) = [(r["lower"], r["upper"]) for r in (emulated, simulated)]
    assert elo < shi and slo < ehi, (emulated["lower"], emulated["upper"], slo, shi)
    # minutes of an engine, not an hour: the burst plus a few looks
    assert emulated["engine_seconds"] < 60


def _streaming(*, per_chunk: int, counted: bool, extra_prompt: int = 0):
    """A completions endpoint that streams `per_chunk` tokens a chunk, with or without a running
    count, and whose final usage counts the prompt `extra_prompt` tokens long (a BOS added)."""

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n, prompt = int(body["max_tokens"]), len(body["prompt"]) + extra_prompt
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for done in range(per_chunk, n + per_chunk, per_chunk):
            await asyncio.sleep(0.005)
            chunk: dict = {"choices": [{"index": 0, "text": "ab", "finish_reason": None}]}
            if counted:
                chunk["usage"] = {"prompt_tokens": prompt, "completion_tokens": min(done, n)}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {"prompt_tokens": prompt, "completion_tokens": n}
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    return completions


_merged_chunks = _streaming(per_chunk=2, counted=False)


async def _overloaded(request: web.Request) -> web.Response:
    return web.json_response(
        {"object": "error", "message": "queue full, try later", "code": 503}, status=503
    )


def _merging_engine(completions=_merged_chunks) -> web.Application:
    app = web.Application()
    metrics = (
        'vllm:cache_config_info{block_size="16",num_gpu_blocks="128"} 1.0\n'
        'vllm:num_requests_waiting{model_name="m"} 0.0\n'
        'vllm:num_requests_running{model_name="m"} 0.0\n'
    )

    async def models(_):
        return web.json_response({"data": [{"id": "m"}]})

    async def prom(_):
        return web.Response(text=metrics)

    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", prom)
    app.router.add_post("/v1/completions", completions)
    return app


def test_several_tokens_per_chunk_without_a_count_are_refused():
    with serving(_merging_engine()) as url:
        backend = VllmBackend(url)
        run = backend.bounded_backlog(load_workload("fixed:8,4"), backlog=4, seed=0)
        try:
            with pytest.raises(KvbenchError) as err:
                run.advance(1.0)
        finally:
            run.close()
    message = str(err.value)
    assert "\n" not in message and message.startswith(url)
    assert "several tokens per chunk without saying how many" in message
    assert "its chunks counted 2, its usage 4 tokens" in message
    assert "--method open-loop" in message


def test_a_failing_engine_ends_the_probe_in_one_line_naming_it():
    with serving(_merging_engine(_overloaded)) as url:
        backend = VllmBackend(url)
        run = backend.bounded_backlog(load_workload("fixed:8,4"), backlog=4, seed=0)
        try:
            with pytest.raises(KvbenchError) as err:
                run.advance(0.5)
        finally:
            run.close()
    message = str(err.value)
    assert "\n" not in message and message.startswith(url)
    assert "of the bounded-backlog probe failed (http_503: queue full, try later)" in message


def test_served_work_is_counted_with_the_chunk_the_user_gave():
    """--engine-setting chunk_size replaces what discovery read (2,048 assumed here); served work
    must use the same ŝ as the search's E[g], or the rate is off by their ratio."""
    with serving(_merging_engine(_overloaded)) as url:
        found = VllmBackend(url)
        given = AmendedProfile(found, settings={"chunk_size": 16})
        assert found.discover_profile().profile.chunk_size == 2048
        assert given.discover_profile().profile.chunk_size == 16
        run = given.bounded_backlog(load_workload("fixed:8,4"), backlog=1, seed=0)
        run.close()
    assert run._chunk == 16


def test_merged_chunks_with_a_running_count_are_served_work_and_a_bos_is_refused():
    """Two tokens a chunk are fine when each chunk says its running count; a prompt the engine
    counts one token longer than sent (a BOS it added) is not the workload's."""
    with serving(_merging_engine(_streaming(per_chunk=2, counted=True))) as url:
        run = VllmBackend(url).bounded_backlog(load_workload("fixed:8,4"), backlog=4, seed=0)
        try:
            bins = run.advance(1.0)
        finally:
            run.close()
    # each request: G(8, 2) − 0 then G(8, 4) − G(8, 2), chunk 2,048: 8 + 1·8 + 1 = 17, then
    # 8 + 3·8 + 6 = 38 in all
    finished = int(bins.finishes.sum())
    assert finished >= 4 and 38 * finished <= bins.work.sum() <= 38 * bins.starts.sum()
    with serving(_merging_engine(_streaming(per_chunk=1, counted=True, extra_prompt=1))) as url:
        run = VllmBackend(url).bounded_backlog(load_workload("fixed:8,4"), backlog=4, seed=0)
        try:
            with pytest.raises(KvbenchError, match=r"counted 9 prompt tokens for request \d+'s 8;"):
                run.advance(1.0)
        finally:
            run.close()


def test_the_driver_backlog_mode_refuses_bad_input():
    from kvbench._core import OUTPUT_SLOT, PROMPT_SLOT, HttpDriver

    template = json.dumps({"prompt": [PROMPT_SLOT], "max_tokens": OUTPUT_SLOT})
    one = np.array([4], np.int64)
    with pytest.raises(ValueError, match="backlog must be ≥ 1"):
        HttpDriver.backlog("http://127.0.0.1:9/v1/completions", one, one, template, backlog=0)
    with pytest.raises(ValueError, match="1 prompt lengths and 2 output lengths"):
        HttpDriver.backlog(
            "http://127.0.0.1:9/v1/completions", one, np.array([4, 4]), template, backlog=1
        )
    with pytest.raises(ValueError, match="prompt length 0 of request 0 must be ≥ 1"):
        HttpDriver.backlog("http://127.0.0.1:9/v1/completions", one * 0, one, template, backlog=1)
    driver = HttpDriver.backlog("http://127.0.0.1:9/v1/completions", one, one, template, backlog=2)
    driver.extend(np.array([5, 6]), np.array([1, 1]))
    assert driver.remaining == 3
    timed = HttpDriver("http://127.0.0.1:9/v1/completions", np.zeros(1), one, one, template, 1.0)
    with pytest.raises(RuntimeError, match="not a bounded-backlog run"):
        timed.extend(one, one)
    assert timed.remaining == 0 and timed.poll_progress().sent[0].size == 0


def test_an_engine_that_goes_away_ends_the_probe_in_one_line():
    with serving(_merging_engine(_streaming(per_chunk=1, counted=True))) as url:
        run = VllmBackend(url).bounded_backlog(load_workload("fixed:8,4"), backlog=4, seed=0)
        served = run.advance(0.5)
    try:
        with pytest.raises(KvbenchError) as err:
            run.advance(3.0)
    finally:
        run.close()
    assert served.finishes.sum() > 0  # it ran while the engine was there
    message = str(err.value)
    assert "\n" not in message and message.startswith(url)
    assert "engine stopped answering at t=" in message and "bounded-backlog probe" in message
