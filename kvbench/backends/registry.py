"""Backends by name: `sim:ENGINE` (the simulator, in-process) and the HTTP engines `vllm`,
`sglang`, `trtllm` (attached with --url, or launched from backends/<engine>/recipe.toml with
--model). One place maps a name and its options to a `Backend`,
so the CLI commands and the search share it and new kinds plug in here."""

from __future__ import annotations

from kvbench.backends.base import Backend
from kvbench.errors import KvbenchError
from kvbench.profile import PAPER_A100, POLICIES, IterationTimeModel, build_profile

SIM_PREFIX = "sim:"


def backend_names() -> list[str]:
    from kvbench.backends.engines import ENGINES

    return [SIM_PREFIX + p for p in POLICIES] + list(ENGINES)


def resolve_backend(
    name: str,
    *,
    url: str | None = None,
    model: str | None = None,
    profile: str | None = None,
    kv_tokens: int | None = None,
    chunk_size: int | None = None,
    batch_time: float | None = None,
    replicas: int = 1,
    seed: int = 0,
) -> Backend:
    """The backend called `name`. Profile flags (profile, kv_tokens, chunk_size, batch_time)
    shape a simulated engine; a real engine reports its own profile, so they are refused there."""
    if name.startswith(SIM_PREFIX):
        from kvbench.backends.sim import SimBackend

        policy = name[len(SIM_PREFIX):]
        if policy not in POLICIES:
            raise KvbenchError(f"unknown backend {name!r}; choose one of {', '.join(backend_names())}")
        if url is not None or model is not None:
            raise KvbenchError(f"{name} is simulated in-process and takes no --url or --model")
        if replicas < 1:
            raise KvbenchError(f"--replicas must be at least 1, got {replicas}")
        for flag, value in (("--kv-tokens", kv_tokens), ("--chunk-size", chunk_size)):
            if value is not None and value < 1:
                raise KvbenchError(f"{flag} must be a positive number of tokens, got {value}")
        if batch_time is not None and not batch_time > 0:
            raise KvbenchError(f"--batch-time must be a positive number of seconds, got {batch_time}")
        overrides = dict(
            kv_tokens=kv_tokens,
            chunk_size=chunk_size,
            iteration_time=None if batch_time is None else IterationTimeModel.constant(batch_time),
        )
        built = build_profile(policy, profile or PAPER_A100.name, **overrides)
        sources = {field: "flag" if value is not None else "preset" for field, value in overrides.items()}
        sources.update(policy="backend name", block_size="preset", token_budget="preset", max_running="preset")
        return SimBackend(built, name=name, replicas=replicas, seed=seed, sources=sources)
    from kvbench.backends.engines import ENGINES, open_engine

    if name not in ENGINES:
        raise KvbenchError(f"unknown backend {name!r}; choose one of {', '.join(backend_names())}")
    given = [f for f, v in (("--profile", profile), ("--kv-tokens", kv_tokens), ("--chunk-size", chunk_size),
                            ("--batch-time", batch_time)) if v is not None]
    if given:
        raise KvbenchError(f"{name}: {', '.join(given)} apply to sim:* backends; a real engine reports its own profile")
    if url is None and model is None:
        raise KvbenchError(f"{name}: give --url of a running server, or --model PATH to launch one")
    return open_engine(name, url=url, model=model, seed=seed)
