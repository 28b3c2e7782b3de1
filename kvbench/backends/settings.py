"""An engine's scheduler settings and how kvbench knows each one.

The engine-aware μ is only as good as the settings it is given: against a real vLLM started with
`--max-num-seqs 4`, kvbench once assumed vLLM's default of 256 running requests and blamed the
model for a +161% gap that was the cap. So every setting carries how it is known:

- read: the engine said so (an endpoint, a metric, its startup log, the launch command);
- given: the user said so (`--engine-setting KEY=VALUE`), which overrides what was read;
- inferred: the engine's own gauges showed it under saturation (a running count pinned below
  what the assumed cap and memory allow while requests waited);
- assumed: the engine's documented default, because nothing exposed it.

The kind is the prefix of the setting's source string ("assumed: vLLM default …"), so the
record that already says where each value came from also says which of the four it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kvbench import validate
from kvbench.backends.base import DiscoveredProfile, QueueSample
from kvbench.errors import KvbenchError

# The scheduler settings a user may state, with what each one is in the engines' own terms.
SETTINGS = {
    "kv_tokens": "KV-cache capacity M in tokens",
    "max_running": "running-request cap (vLLM --max-num-seqs, SGLang --max-running-requests, "
    "TensorRT-LLM --max_batch_size)",
    "token_budget": "tokens per iteration (vLLM --max-num-batched-tokens, TensorRT-LLM "
    "--max_num_tokens)",
    "chunk_size": "most prefill tokens one request gets per iteration (SGLang "
    "--chunked-prefill-size)",
    "block_size": "KV block (page) size in tokens",
}
KINDS = ("read", "given", "inferred", "assumed")
GIVEN, INFERRED, ASSUMED = "given: ", "inferred: ", "assumed: "


def assumed(why: str) -> str:
    """The source of a setting kvbench took from the engine's documented default."""
    return ASSUMED + why


def kind(source: str) -> str:
    """read, given, inferred or assumed, from a setting's source string."""
    for name, prefix in (("given", GIVEN), ("inferred", INFERRED), ("assumed", ASSUMED)):
        if source.startswith(prefix):
            return name
    return "read"


def labelled(source: str) -> str:
    """A setting's source with its kind in front, read ones included."""
    return source if kind(source) != "read" else f"read: {source}"


def unprefixed(source: str) -> str:
    """A setting's source without its kind (for a table that shows the kind beside it)."""
    for prefix in (GIVEN, INFERRED, ASSUMED):
        if source.startswith(prefix):
            return source[len(prefix) :]
    return source


def parse_given(values: Iterable[str]) -> dict[str | None, dict[str, int]]:
    """`--engine-setting [LABEL:]KEY=VALUE` values → {label or None (every engine): settings}."""
    given: dict[str | None, dict[str, int]] = {}
    for value in values:
        head, eq, number = value.partition("=")
        label, _, key = head.rpartition(":")
        if not eq or key not in SETTINGS:
            raise KvbenchError(
                f"--engine-setting {value!r}: expected [LABEL:]KEY=VALUE with KEY one of "
                f"{', '.join(SETTINGS)}"
            )
        try:
            count = int(number.replace(",", "").replace("_", ""))
        except ValueError:
            raise KvbenchError(
                f"--engine-setting {value!r}: {key} must be a whole number of "
                f"{'tokens' if key != 'max_running' else 'requests'}"
            ) from None
        validate.positive_int(count, f"--engine-setting {key}", maximum=validate.MAX_TOKENS)
        given.setdefault(label or None, {})[key] = count
    return given


def for_label(given: dict[str | None, dict[str, int]], label: str) -> dict[str, int]:
    """The settings that reach the engine called `label`: those for every engine, then its own."""
    return {**given.get(None, {}), **given.get(label, {})}


def apply_given(found: DiscoveredProfile, given: dict[str, int]) -> DiscoveredProfile:
    """The discovered profile with the user's settings in place of what was read or assumed; a
    given value that contradicts a read one is kept (the user may know better, e.g. an engine
    behind a proxy) and says what it replaced."""
    if not given:
        return found
    sources = dict(found.sources)
    for key, value in given.items():
        before = getattr(found.profile, key)
        replaced = "" if before == value else f"; replaces {before:,} ({sources.get(key, '?')})"
        sources[key] = f"{GIVEN}--engine-setting {key}={value}{replaced}"
    return DiscoveredProfile(found.profile.replace(**given), sources)


@dataclass(frozen=True)
class RunningCap:
    """What the gauges of a saturated run say about the running-request cap."""

    value: int  # the running count the engine held while requests waited
    share: float  # of the samples with requests waiting, the share at exactly `value`
    waiting: int  # the most requests seen waiting meanwhile
    kv_usage: float | None  # the highest KV usage seen at those samples (0..1)


# A cap shows as a running count that stays at one value while requests wait and memory is not
# full; when memory binds instead, KV usage is near full and the count wanders with the requests'
# sizes.
PINNED_SHARE = 0.8
MEMORY_FULL = 0.9


def pinned_running(samples: Sequence[QueueSample]) -> RunningCap | None:
    """The running count the engine held while requests waited, when it held one (the samples
    of one saturated run); None when the engine exposes no gauges or never held a count."""
    busy = [s for s in samples if s.running is not None and (s.waiting or 0) > 0]
    if len(busy) < 10:
        return None
    top = max(s.running for s in busy if s.running is not None)
    at_top = [s for s in busy if s.running == top]
    usage = [s.kv_usage for s in at_top if s.kv_usage is not None]
    return RunningCap(
        value=top,
        share=len(at_top) / len(busy),
        waiting=max(s.waiting or 0 for s in busy),
        kv_usage=max(usage) if usage else None,
    )


def check_running_cap(
    found: DiscoveredProfile, cap: RunningCap | None, where: str
) -> tuple[DiscoveredProfile, list[str]]:
    """The profile after what a saturated run's gauges showed, and the contradictions to flag.

    An assumed cap that the engine held a lower count below, while requests waited and memory
    was not full, is replaced by the inferred one. A count above any cap (assumed, read or
    given) contradicts it and is flagged, not fixed: kvbench cannot tell which is wrong."""
    if cap is None:
        return found, []
    setting = found.profile.max_running
    source = found.sources.get("max_running", "")
    flags: list[str] = []
    if cap.value > setting:
        flags.append(
            f"max_running = {setting:,} ({labelled(source)}) is contradicted by the "
            f"engine's gauges: {cap.value:,} requests ran at once in {where}"
        )
        return found, flags
    memory_full = cap.kv_usage is not None and cap.kv_usage >= MEMORY_FULL
    if cap.value < setting and cap.share >= PINNED_SHARE and not memory_full:
        usage = "" if cap.kv_usage is None else f", KV ≤ {cap.kv_usage:.0%} full"
        evidence = (
            f"running pinned at {cap.value:,} in {cap.share:.0%} of the samples while up to "
            f"{cap.waiting:,} waited{usage} ({where})"
        )
        if kind(source) == "assumed" and cap.kv_usage is not None:
            sources = dict(found.sources, max_running=f"{INFERRED}{evidence}; was {source}")
            return DiscoveredProfile(found.profile.replace(max_running=cap.value), sources), []
        # a cap that was read or given is the configured one, and without a KV gauge memory
        # cannot be ruled out: say what the gauges showed, change nothing
        flags.append(
            f"max_running = {setting:,} ({kind(source)}) does not look binding: {evidence}"
        )
    return found, flags


def table(found: DiscoveredProfile) -> list[dict[str, object]]:
    """One row per setting: name, value, kind, source (for reports)."""
    return [
        {
            "setting": key,
            "value": getattr(found.profile, key),
            "kind": kind(found.sources.get(key, "")),
            "source": found.sources.get(key, ""),
        }
        for key in SETTINGS
    ]
