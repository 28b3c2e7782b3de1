"""`kvbench theory` and `kvbench provision`: the paper's stability model as commands."""

from __future__ import annotations

from typing import Any

import click

from kvbench import theory as model
from kvbench.calibration import IterationTimeFit, load_calibration
from kvbench.cli import options
from kvbench.engine_theory import beside_paper
from kvbench.export.json import write_json
from kvbench.output.terminal import block, estimate, highlight, number
from kvbench.profile import (
    DEFAULT_HARDWARE,
    UNLIMITED,
    EngineProfile,
    IterationTimeModel,
    build_profile,
)
from kvbench.workload import SyntheticWorkload, TraceWorkload, Workload, load_workload

_PAPER = f"default: {model.PAPER_KV_TOKENS}, the paper's"
_PAPER_CHUNK = f"default: {model.PAPER_CHUNK_SIZE}, the paper's"
_PAPER_B = (
    "default: the paper's measured value for pd-1:1 (0.0372), pd-2:1 (0.0430) and pd-1:2 (0.0337); "
    "0.0372 for other workloads"
)
_VERDICT_COLORS = {
    model.Stability.STABLE: "green",
    model.Stability.UNSTABLE: "red",
    model.Stability.UNDETERMINED: "yellow",
}


def _evaluate(
    workload_spec: str,
    kv_tokens: int | None,
    chunk_size: int | None,
    batch_time: float | None,
    rate: float | None,
    exact: bool,
) -> tuple[Workload, model.TheoryResult, str]:
    workload = load_workload(workload_spec)
    if batch_time is None:
        batch_time = model.PAPER_BATCH_TIMES.get(workload.name, model.PAPER_BATCH_TIME)
        if workload.name in model.PAPER_BATCH_TIMES:
            source = f"paper's b̄ for {workload.name}"
        else:
            source = "default: the paper's pd-1:1 b̄; set --batch-time"
    else:
        source = "given"
    result = model.evaluate(
        workload,
        kv_tokens=model.PAPER_KV_TOKENS if kv_tokens is None else kv_tokens,
        chunk_size=model.PAPER_CHUNK_SIZE if chunk_size is None else chunk_size,
        batch_time=batch_time,
        rate=rate,
        closed_form=not exact,
    )
    return workload, result, source


def _describe(workload: Workload) -> str:
    if isinstance(workload, TraceWorkload):
        return f"{workload.name} (trace, {len(workload.prompt_lens)} requests)"
    assert isinstance(workload, SyntheticWorkload)  # the other kind of workload
    law = workload.law
    return (
        f"{workload.name} (s ~ U{{{law.prompt_min}..{law.prompt_max}}}, "
        f"o ~ U{{{law.output_min}..{law.output_max}}})"
    )


def _rate(result: model.TheoryResult, mu: float) -> str:
    """A rate proportional to μ, with μ's relative standard error."""
    return estimate(mu, mu * result.mu_stderr / result.mu, "req/s")


@click.command(
    epilog="""\b
Examples:
  kvbench theory                                   # the paper's setting: μ = 3.263 req/s
  kvbench theory --workload pd-2:1                 # μ = 3.956 req/s
  kvbench theory --workload azure-conv --request-rate 2.5
  kvbench theory --workload trace.jsonl --kv-tokens 262144 --chunk-size 2048 --batch-time 0.05 --json
  kvbench theory --engine trtllm                   # paper's μ beside TensorRT-LLM's own bound
  kvbench theory --engine vllm --workload azure-conv --iteration-model fit.json --json
"""
)
@options.workload()
@options.kv_tokens(_PAPER)
@options.chunk_size(_PAPER_CHUNK)
@options.batch_time(_PAPER_B)
@options.request_rate()
@options.exact_g()
@options.engine(
    "Also predict this engine's own boundary (engine-aware μ: its admission rule, pages, token "
    "budget and running cap, iteration time at the operating point), beside the paper's μ."
)
@options.profile_preset()
@click.option(
    "--iteration-model",
    "iteration_model_path",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Iteration-time model fitted by `kvbench calibrate --output FILE` (with --engine); its "
    "measured preemption waste too, unless --preemption-waste is given.",
)
@click.option(
    "--preemption-waste",
    type=float,
    default=None,
    metavar="TOKENS",
    help="Measured recomputed batch tokens per request (preemption/retraction), with --engine; "
    "default: the rule's a-priori estimate.",
)
@options.json_output()
def theory(
    workload_spec: str,
    kv_tokens: int | None,
    chunk_size: int | None,
    batch_time: float | None,
    request_rate: float | None,
    exact: bool,
    engine: str | None,
    profile_name: str | None,
    iteration_model_path: str | None,
    preemption_waste: float | None,
    as_json: bool,
) -> None:
    """Stable service rate μ = M / (b̄·E[g]) of one replica under the paper's KV-cache queueing
    model (Nie, Si & Zhou, ICML 2026), and what it says about an arrival rate λ.

    λ > μ is unstable under any scheduler; λ < μ(1 − δ), δ = max(s+o)/M, is stable under a
    work-conserving one; in between the theory is silent. g defaults to the paper's closed form,
    which reproduces its published figures; --exact uses the ⌈s/ŝ⌉-chunk sum (both are shown).
    For a trace, μ carries the standard error of E[g] over its rows.

    With --engine, the engine preset's profile (the one `kvbench simulate --engine` uses) sets M
    and ŝ unless given, and the engine-aware μ is the smallest of its memory or reservation
    bound, token-budget bound and running-cap bound, each at the iteration time its own operating
    point implies. The paper's μ beside it uses that same iteration time as b̄ (or --batch-time),
    so the two differ only by what the paper's model leaves out of the scheduler."""
    if engine is not None:
        _engine_theory(
            workload_spec,
            kv_tokens,
            chunk_size,
            batch_time,
            request_rate,
            exact,
            engine,
            profile_name,
            iteration_model_path,
            preemption_waste,
            as_json,
        )
        return
    if profile_name or iteration_model_path or preemption_waste is not None:
        raise click.UsageError("--profile, --iteration-model and --preemption-waste need --engine")
    workload, result, b_source = _evaluate(
        workload_spec, kv_tokens, chunk_size, batch_time, request_rate, exact
    )
    if as_json:
        write_json(result.as_record())
        return
    forms = {True: "paper's closed-form g", False: "exact g, ⌈s/ŝ⌉-chunk sum"}
    rows = [
        ("M, ŝ", f"{result.kv_tokens} tokens, {result.chunk_size} tokens"),
        ("b̄", f"{result.batch_time:g} s", b_source),
        ("E[g]", estimate(result.expected_g.mean, result.expected_g.stderr, "token·iterations", 0)),
        ("μ (stable rate)", highlight(_rate(result, result.mu)), forms[result.closed_form]),
        ("μ, other g", _rate(result, result.mu_other_form), forms[not result.closed_form]),
        ("δ = max(s+o)/M", number(result.delta, 4)),
        ("stable below", _rate(result, result.mu_lower), "μ(1 − δ), Thm 4.2"),
        ("unstable above", _rate(result, result.mu), "μ, Thm 4.1"),
    ]
    if result.verdict is not None:
        verdict = result.verdict
        rows.append(
            (
                f"λ = {verdict.rate:g} req/s",
                highlight(verdict.stability.value, _VERDICT_COLORS[verdict.stability]),
                _verdict_note(verdict),
            )
        )
    click.echo(block(f"Stability (paper model): {_describe(workload)}", rows))


def _engine_theory(
    workload_spec: str,
    kv_tokens: int | None,
    chunk_size: int | None,
    batch_time: float | None,
    rate: float | None,
    exact: bool,
    engine: str,
    profile_name: str | None,
    iteration_model_path: str | None,
    preemption_waste: float | None,
    as_json: bool,
) -> None:
    if batch_time is not None and iteration_model_path is not None:
        raise click.UsageError("give --batch-time or --iteration-model, not both")
    profile = build_profile(
        engine, profile_name or DEFAULT_HARDWARE.name, kv_tokens=kv_tokens, chunk_size=chunk_size
    )
    fit: IterationTimeFit | None = None
    if iteration_model_path is not None:
        calibration = load_calibration(iteration_model_path)
        fit = calibration.fit
        iteration = fit.model()
        b_source = f"fitted model ({iteration_model_path})"
        if preemption_waste is None:
            preemption_waste = calibration.preemption_waste
    elif batch_time is not None:
        iteration = IterationTimeModel.constant(batch_time)
        b_source = "given, constant"
    else:
        iteration = profile.iteration_time
        b_source = f"preset model of {profile.name}"
    workload = load_workload(workload_spec)
    prediction, paper = beside_paper(
        profile.replace(iteration_time=iteration),
        workload,
        rate=rate,
        closed_form=not exact,
        iteration_fit=fit,
        preemption_waste=preemption_waste,
    )
    b_paper = prediction.iteration_time
    record = paper.as_record()
    record.update(
        {
            "mu_paper": paper.mu,
            "mu_engine_aware": prediction.mu,
            "mu_engine_aware_stderr": prediction.mu_stderr,
            "binding": prediction.binding,
            "engine": engine,
            "profile": profile.name,
            "iteration_time_source": b_source,
            "engine_aware": prediction.to_json(),
        }
    )
    if rate is not None:
        engine_verdict = model.stability_verdict(rate, prediction.mu, paper.delta)
        record["verdict_engine_aware"] = engine_verdict.stability.value
    if as_json:
        write_json(record)
        return
    rows = [
        ("M, ŝ", f"{profile.kv_tokens} tokens, {profile.chunk_size} tokens"),
        ("engine", engine, _limits(profile)),
        ("b at operating point", f"{b_paper:.4f} s", b_source),
        ("μ, paper model", _rate(paper, paper.mu), "M / (b̄·E[g]) with that b̄"),
        (
            "μ, engine-aware",
            highlight(estimate(prediction.mu, prediction.mu_stderr, "req/s")),
            f"binding: {prediction.binding}",
        ),
    ]
    for bound in sorted(prediction.bounds, key=lambda b: b.mu):
        rows.append((f"  {bound.name}", estimate(bound.mu, 0.0, "req/s"), bound.detail))
    rows.append(("engine-aware / paper", f"{prediction.mu / paper.mu - 1:+.1%}"))
    if rate is not None:
        verdict = model.stability_verdict(rate, prediction.mu, paper.delta)
        rows.append(
            (
                f"λ = {rate:g} req/s",
                highlight(verdict.stability.value, _VERDICT_COLORS[verdict.stability]),
                _verdict_note(verdict) + " (engine-aware μ)",
            )
        )
    click.echo(
        block(f"Stability (paper model vs engine-aware, {engine}): {_describe(workload)}", rows)
    )


def _limits(profile: EngineProfile) -> str:
    parts = [f"pages of {profile.block_size}"]
    if profile.token_budget < UNLIMITED:
        parts.append(f"budget {profile.token_budget} tokens/iteration")
    if profile.max_running < UNLIMITED:
        parts.append(f"≤ {profile.max_running} running")
    if profile.separate_prefill_decode:
        parts.append("separate prefill and decode batches")
    return ", ".join(parts)


def _verdict_note(verdict: model.Verdict) -> str:
    if verdict.stability is model.Stability.UNSTABLE:
        return f"λ > μ = {number(verdict.mu)} req/s"
    if verdict.stability is model.Stability.STABLE:
        return f"λ < μ(1 − δ) = {number(verdict.mu_lower)} req/s"
    return f"theory silent in [{number(verdict.mu_lower)}, {number(verdict.mu)}] req/s"


@click.command(
    epilog="""\b
Examples:
  kvbench provision --request-rate 50                        # pd-1:1 on the paper's A100: 18 replicas
  kvbench provision --request-rate 50 --workload azure-conv --target-utilization 0.8
  kvbench provision --request-rate 120 --workload trace.csv --kv-tokens 400000 --batch-time 0.045 --json
"""
)
@options.request_rate(required=True)
@options.workload()
@options.kv_tokens(_PAPER)
@options.chunk_size(_PAPER_CHUNK)
@options.batch_time(_PAPER_B)
@click.option(
    "--target-utilization",
    type=float,
    default=0.9,
    show_default=True,
    metavar="ρ",
    help="Highest fraction of each replica's μ to plan for.",
)
@options.exact_g()
@options.json_output()
def provision(
    request_rate: float,
    workload_spec: str,
    kv_tokens: int | None,
    chunk_size: int | None,
    batch_time: float | None,
    target_utilization: float,
    exact: bool,
    as_json: bool,
) -> None:
    """Replicas G = ⌈λ / (ρ·μ)⌉ needed to serve λ requests/s with each replica at utilisation
    ρ or below, μ from the paper's model (see `kvbench theory`). For a trace, a conservative
    count also uses μ at the lower end of its 95% interval."""
    workload, result, b_source = _evaluate(
        workload_spec, kv_tokens, chunk_size, batch_time, None, exact
    )
    replicas = model.replicas_needed(request_rate, result.mu, target_utilization)
    mu_low = result.mu - 1.96 * result.mu_stderr
    conservative = (
        model.replicas_needed(request_rate, mu_low, target_utilization) if mu_low > 0 else None
    )
    record: dict[str, Any] = {
        "model": "paper",
        "workload": result.workload,
        "request_rate": request_rate,
        "target_utilization": target_utilization,
        "replicas": replicas,
        "replicas_conservative": conservative,
        "mu": result.mu,
        "mu_stderr": result.mu_stderr,
        "utilization": request_rate / (replicas * result.mu),
        "capacity": replicas * result.mu,
        "kv_tokens": result.kv_tokens,
        "chunk_size": result.chunk_size,
        "batch_time": result.batch_time,
        "g": "closed-form" if result.closed_form else "exact",
    }
    if as_json:
        write_json(record)
        return
    rows = [
        ("replicas", highlight(str(replicas)), f"⌈λ / (ρ·μ)⌉ at ρ = {target_utilization:g}"),
        (
            "μ per replica",
            _rate(result, result.mu),
            f"M = {result.kv_tokens}, ŝ = {result.chunk_size}, b̄ = {result.batch_time:g} s ({b_source})",
        ),
        ("utilisation", number(record["utilization"]), "λ / (G·μ)"),
        ("capacity", estimate(record["capacity"], replicas * result.mu_stderr, "req/s", 2), "G·μ"),
    ]
    if result.mu_stderr > 0:
        rows.append(
            (
                "replicas, 95% safe",
                str(conservative) if conservative is not None else "n/a",
                "μ at the lower end of its 95% interval",
            )
        )
    click.echo(
        block(
            f"Provisioning (paper model): {_describe(workload)} at λ = {request_rate:g} req/s", rows
        )
    )
