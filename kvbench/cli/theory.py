"""`kvbench theory` and `kvbench provision`: the paper's stability model as commands."""

from __future__ import annotations

import click

from kvbench import theory as model
from kvbench.cli import options
from kvbench.export.json import write_json
from kvbench.output.terminal import block, estimate, highlight, number
from kvbench.workload import TraceWorkload, Workload, load_workload

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
        source = f"paper's b̄ for {workload.name}" if workload.name in model.PAPER_BATCH_TIMES else "paper's b̄ for pd-1:1"
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
"""
)
@options.workload()
@options.kv_tokens(_PAPER)
@options.chunk_size(_PAPER_CHUNK)
@options.batch_time(_PAPER_B)
@options.request_rate()
@options.exact_g()
@options.json_output()
def theory(
    workload_spec: str,
    kv_tokens: int | None,
    chunk_size: int | None,
    batch_time: float | None,
    request_rate: float | None,
    exact: bool,
    as_json: bool,
) -> None:
    """Stable service rate μ = M / (b̄·E[g]) of one replica under the paper's KV-cache queueing
    model (Nie, Si & Zhou, ICML 2026), and what it says about an arrival rate λ.

    λ > μ is unstable under any scheduler; λ < μ(1 − δ), δ = max(s+o)/M, is stable under a
    work-conserving one; in between the theory is silent. g defaults to the paper's closed form,
    which reproduces its published figures; --exact uses the ⌈s/ŝ⌉-chunk sum (both are shown).
    For a trace, μ carries the standard error of E[g] over its rows."""
    workload, result, b_source = _evaluate(workload_spec, kv_tokens, chunk_size, batch_time, request_rate, exact)
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
    workload, result, b_source = _evaluate(workload_spec, kv_tokens, chunk_size, batch_time, None, exact)
    replicas = model.replicas_needed(request_rate, result.mu, target_utilization)
    mu_low = result.mu - 1.96 * result.mu_stderr
    conservative = model.replicas_needed(request_rate, mu_low, target_utilization) if mu_low > 0 else None
    record = {
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
        ("μ per replica", _rate(result, result.mu), f"M = {result.kv_tokens}, ŝ = {result.chunk_size}, b̄ = {result.batch_time:g} s ({b_source})"),
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
    click.echo(block(f"Provisioning (paper model): {_describe(workload)} at λ = {request_rate:g} req/s", rows))
