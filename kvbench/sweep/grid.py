"""A sweep's grid: axes of values from the command line or a TOML file, expanded into cells.

A cell is a plain dict of everything that decides its result (JSON types only, so it travels to
a process pool or a Ray worker as is), and its key is a hash of that dict: the same parameters
give the same key in any run, which is what `--resume` matches finished rows by.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from kvbench import validate
from kvbench.errors import KvbenchError
from kvbench.profile import DEFAULT_HARDWARE, HARDWARE, POLICIES, EngineProfile, build_profile

SIM_PREFIX = "sim:"
# The profile fields an engine entry may set after its rule (`sim:vllm:token_budget=4096`); M and
# the iteration-time model are axes of their own (kv_tokens, profile).
SETTINGS = tuple(
    f.name
    for f in dataclasses.fields(EngineProfile)
    if f.name not in ("policy", "kv_tokens", "iteration_time", "name", "source")
)
_SETTING_TYPES = {"max_tokens_cap": int}
METHODS = ("backlog", "open-loop")
_SCALAR_TYPES: dict[str, Any] = {
    "method": str,
    "precision": (int, float),
    "max_engine_seconds": (int, float),
    "confidence": (int, float),
    "target_rate": (int, float),
    "target_utilization": (int, float),
    "gpu_price": (int, float),
    "gpus_per_replica": int,
}
_KIND_NAMES: dict[Any, str] = {str: "a string", int: "an integer", (int, float): "a number"}
# Axes take a list (or one value); the rest of the keys are one value for the whole sweep.
AXES = ("engine", "workload", "kv_tokens", "profile", "replicas", "burstiness", "seed")
SCALARS = (
    "method",
    "precision",
    "max_engine_seconds",
    "confidence",
    "target_rate",
    "target_utilization",
    "gpu_price",
    "gpus_per_replica",
)


@dataclass(frozen=True)
class EngineEntry:
    """One engine of the grid: a simulator rule and the profile settings it overrides."""

    label: str
    rule: str
    settings: dict[str, Any] = field(default_factory=dict)


def parse_engine(text: str) -> EngineEntry:
    """`sim:RULE` or `sim:RULE:KEY=VALUE,KEY=VALUE` (profile settings, e.g. token_budget)."""
    label = text.strip()
    if not label.startswith(SIM_PREFIX):
        raise KvbenchError(
            f"engine {text!r}: a sweep runs the simulator; give sim:RULE with RULE one of "
            f"{', '.join(POLICIES)} (optionally :KEY=VALUE,… profile settings)"
        )
    rule, _, rest = label[len(SIM_PREFIX) :].partition(":")
    if rule not in POLICIES:
        raise KvbenchError(
            f"engine {text!r}: unknown rule {rule!r}; choose one of {', '.join(POLICIES)}"
        )
    settings: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in SETTINGS:
            raise KvbenchError(
                f"engine {text!r}: {item!r} is not KEY=VALUE with KEY one of {', '.join(SETTINGS)}"
            )
        settings[key] = _setting(text, key, value.strip())
    return EngineEntry(label, rule, settings)


def _setting(engine: str, key: str, value: str) -> Any:
    """A setting's value as its field's type: counts (no default, or max_tokens_cap) positive
    integers, flags true/false, ratios numbers."""
    default = next(f.default for f in dataclasses.fields(EngineProfile) if f.name == key)
    kind = int if default is dataclasses.MISSING else _SETTING_TYPES.get(key, type(default))
    try:
        if kind is bool:
            return {"true": True, "false": False}[value.lower()]
        if kind is int:
            if int(value) < 1:
                raise ValueError(value)
            return int(value)
        return float(value)
    except (KeyError, ValueError):
        want = {bool: "true or false", int: "a positive integer"}.get(kind, "a number")
        raise KvbenchError(f"engine {engine!r}: {key} must be {want}, got {value!r}") from None


@dataclass
class Grid:
    """The axes and the sweep-wide settings; `cells()` is their product."""

    engine: list[str] = field(default_factory=lambda: ["sim:vllm"])
    workload: list[str] = field(default_factory=lambda: ["pd-1:1"])
    kv_tokens: list[int | None] = field(default_factory=lambda: [None])
    profile: list[str] = field(default_factory=lambda: [DEFAULT_HARDWARE.name])
    replicas: list[int] = field(default_factory=lambda: [1])
    burstiness: list[float] = field(default_factory=lambda: [1.0])
    seed: list[int] = field(default_factory=lambda: [0])
    method: str = "backlog"
    precision: float = 0.05
    max_engine_seconds: float = 43200.0
    confidence: float = 0.95
    target_rate: float | None = None
    target_utilization: float = 0.9
    gpu_price: float | None = None
    gpus_per_replica: int = 1

    def check(self) -> None:
        """Every value checked before any cell runs (KvbenchError, one line)."""
        from kvbench.benchmark.search import check_search_settings
        from kvbench.workload import load_workload

        for axis in AXES:
            values = getattr(self, axis)
            if not values:
                raise KvbenchError(f"the grid's {axis} axis is empty")
            if len(set(map(str, values))) != len(values):
                raise KvbenchError(f"the grid's {axis} axis repeats a value: {values}")
        engines = [parse_engine(e) for e in self.engine]
        for spec in self.workload:
            load_workload(spec)
        for m in self.kv_tokens:
            if m is not None:
                validate.token_count(m, "kv_tokens")
        for name in self.profile:
            if name not in HARDWARE:
                raise KvbenchError(f"unknown profile {name!r}; choose one of {', '.join(HARDWARE)}")
        for e in engines:  # a setting the rule's profile cannot take fails here, not in a cell
            build_profile(e.rule, self.profile[0], **e.settings)
        for g in self.replicas:
            validate.positive_int(g, "replicas")
        for b in self.burstiness:
            validate.positive_number(b, "burstiness")
        for s in self.seed:
            validate.seed(s)
        if self.method not in METHODS:
            raise KvbenchError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "backlog" and self.burstiness != [1.0]:
            raise KvbenchError(
                "burstiness shapes open-loop arrivals; the backlog method keeps a queue and has "
                "none, so its λ* does not depend on it: add --method open-loop"
            )
        check_search_settings(self.precision, self.confidence, self.max_engine_seconds)
        if self.target_rate is not None:
            validate.positive_number(self.target_rate, "target_rate")
        validate.in_range(self.target_utilization, "target_utilization", 0.01, 1.0)
        if self.gpu_price is not None:
            validate.positive_number(self.gpu_price, "gpu_price")
        validate.positive_int(self.gpus_per_replica, "gpus_per_replica")

    def cells(self) -> list[dict[str, Any]]:
        settings = {
            "method": self.method,
            "precision": self.precision,
            "max_engine_seconds": self.max_engine_seconds,
            "confidence": self.confidence,
            "target_rate": self.target_rate,
            "target_utilization": self.target_utilization,
            "gpu_price": self.gpu_price,
            "gpus_per_replica": self.gpus_per_replica,
        }
        out = []
        for engine, workload, m, profile, g, b, seed in itertools.product(
            *(getattr(self, axis) for axis in AXES)
        ):
            entry = parse_engine(engine)
            cell = {
                "engine": entry.label,
                "rule": entry.rule,
                "settings": entry.settings,
                "workload": workload,
                "kv_tokens": m,
                "profile": profile,
                "replicas": g,
                "burstiness": float(b),
                "seed": seed,
                **settings,
            }
            out.append({"key": cell_key(cell), **cell})
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cell_key(cell: dict[str, Any]) -> str:
    """A stable 16-hex-digit key of a cell's parameters (its `key` field left out)."""
    params = {k: v for k, v in cell.items() if k != "key"}
    text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def split_values(values: tuple[str, ...]) -> list[str]:
    """A repeatable flag's values, each also a comma-separated list (`--seed 0,1 --seed 2`); an
    engine's settings keep their commas (`sim:vllm:token_budget=4096,max_running=64`)."""
    out: list[str] = []
    for value in values:
        out.extend(p.strip() for p in re.split(r",(?![^:,]*=)", value) if p.strip())
    return out


def load_grid_file(path: str) -> dict[str, Any]:
    """The keys of a grid TOML file, checked by name; values are checked with the grid."""
    text = validate.input_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise KvbenchError(f"{path}: {err}") from None
    known = AXES + SCALARS
    for key, value in data.items():
        if key not in known:
            raise KvbenchError(
                f"{path}:{_line_of(text, key)}: unknown key {key!r}; known: {', '.join(known)}"
            )
        if key in SCALARS and isinstance(value, (list, dict)):
            raise KvbenchError(f"{path}:{_line_of(text, key)}: {key} takes one value, not a list")
        if key in AXES and isinstance(value, dict):
            raise KvbenchError(f"{path}:{_line_of(text, key)}: {key} takes a value or a list")
        kind = _SCALAR_TYPES.get(key)
        if kind is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise KvbenchError(
                f"{path}:{_line_of(text, key)}: {key} must be {_KIND_NAMES[kind]}, got {value!r}"
            )
    return {
        k: (list(v) if k in AXES and isinstance(v, list) else [v] if k in AXES else v)
        for k, v in data.items()
    }


def _line_of(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
    return 1


_AXIS_TYPES: dict[str, type] = {"kv_tokens": int, "replicas": int, "burstiness": float, "seed": int}


def _axis_value(source: str, key: str, value: Any) -> Any:
    """One axis value as its type: from the command line a string, from TOML a TOML value."""
    kind = _AXIS_TYPES.get(key, str)
    if isinstance(value, str) and kind is not str:
        try:
            return kind(value)
        except ValueError:
            pass
    elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(value, kind) and not isinstance(value, bool):
        return value
    want = {int: "an integer", float: "a number", str: "a string"}[kind]
    raise KvbenchError(f"{source}: {key} values must be {want}, got {value!r}")


def build_grid(file_values: dict[str, Any], flags: dict[str, Any], source: str) -> Grid:
    """The grid from a file's keys with the command line's flags over them (a flag given
    replaces the file's value), defaults for the rest; checked."""
    values: dict[str, Any] = {}
    for key, value in [*file_values.items(), *flags.items()]:
        if value is None or value == []:
            continue
        where = source if key in file_values and key not in flags else "--" + key.replace("_", "-")
        values[key] = [_axis_value(where, key, v) for v in value] if key in AXES else value
    grid = Grid(**values)
    grid.check()
    return grid
