"""Launching an engine from its recipe (backends/<engine>/recipe.toml, shipped inside the package
as kvbench/recipes/): start it with a model path, wait for health with a timeout, keep its log,
and stop it, with every process it started.

A recipe is data: the command template, the defaults kvbench adds unless the user's extra
arguments set the same flag, defaults added only where the installed engine defines them, the
engine's own configuration file, the launch flags that are profile settings, and where M is read.
Recipes keep the engine's own scheduling defaults (a vendor measures an engine as deployed); what
they add is observation: metrics on, state published often enough to be sampled under load.
Servers bind to 127.0.0.1 unless told otherwise. kvbench's own emulator is launched the same
way, from a recipe built in code (`emulator_recipe`).

No child imports from the directory kvbench runs in: the emulator runs with `python -P` and an
engine with PYTHONSAFEPATH=1 (its interpreter may predate -P; older ones ignore the variable), so
a `./kvbench/` or `./vllm/` there is never imported in place of the installed package.

A server runs in a session (and process group) of its own, so a Ctrl-C at the terminal reaches
kvbench alone: kvbench saves what it measured and then stops the server's whole group (an engine
starts its own workers). A watchdog process (guard.py) stops the group if kvbench dies without
doing so, even by SIGKILL.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

from kvbench.backends.base import Backend
from kvbench.backends.guard import stop_group
from kvbench.errors import EngineError, KvbenchError

# backends/<engine>/recipe.toml in the repository; the build maps that folder into the package.
RECIPES: Traversable = resources.files("kvbench") / "recipes"

REDACTED = "<redacted>"
# Words that mark a flag or an environment variable as holding a credential.
_SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "credential"}


def is_secret_name(name: str) -> bool:
    """Whether a flag (`--api-key`) or variable (`HF_TOKEN`) names a credential. Whole words
    only, so `--max-num-batched-tokens` and `--tokenizer` stay readable."""
    words = re.split(r"[^a-z0-9]+", name.lower())
    return any(w in _SECRET_WORDS or w.endswith(("key", "token", "secret")) for w in words if w)


def is_secret_variable(name: str) -> bool:
    """Whether an environment variable may hold a credential: any of the words anywhere in its
    name (`HF_TOKEN`, `OPENAI_API_KEY`, `MYSECRET`); hiding a harmless value costs nothing."""
    return any(w.upper() in name.upper() for w in _SECRET_WORDS if w != "apikey")


def redact_env(env: dict[str, str]) -> dict[str, str]:
    return {k: REDACTED if is_secret_variable(k) else v for k, v in env.items()}


def redact_argv(argv: list[str]) -> list[str]:
    """`argv` with the value of every credential flag (`--api-key X`, `--api-key=X`) hidden."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        secret = arg.startswith("-") and is_secret_name(flag)
        if secret and eq:
            out.append(f"{flag}={REDACTED}")
        else:
            out.append(arg)
            hide_next = secret
    return out


def split_engine_prefix(value: str, labels: Iterable[str]) -> tuple[str | None, str]:
    """(`ENGINE`, the rest) for a value typed `ENGINE=...` with ENGINE one of `labels` (the
    engines compared), else (None, value). A prefix that names an engine kvbench has a recipe
    for but is not among `labels` is refused: it was meant for an engine that is not there."""
    head, eq, rest = value.partition("=")
    if not eq:
        return None, value
    if head in set(labels):
        return head, rest
    if re.fullmatch(r"[a-z]+", head) and (RECIPES / head).is_dir():
        raise KvbenchError(f"{value!r}: {head} is not among the engines compared (--backends)")
    return None, value


def redact_given(values: Iterable[str], labels: Iterable[str], *, env: bool) -> list[str]:
    """--engine-env (`env`) or --engine-arg values as typed, each maybe prefixed `ENGINE=` (one
    of `labels`), with credentials redacted as in redact_env and redact_argv."""
    labels = list(labels)
    split = []
    for value in values:
        engine, rest = split_engine_prefix(value, labels)
        split.append((f"{engine}=", rest) if engine else ("", value))
    out = [prefix + item for prefix, item in split]
    if env:
        for i, (prefix, item) in enumerate(split):
            key, eq, _ = item.partition("=")
            if eq and is_secret_variable(key):
                out[i] = f"{prefix}{key}={REDACTED}"
        return out
    # a credential flag's value is the next argument given to the same engine(s)
    for prefix in {p for p, _ in split}:
        indices = [i for i, (p, _) in enumerate(split) if p == prefix]
        hidden = redact_argv([split[i][1] for i in indices])
        for i, item in zip(indices, hidden, strict=True):
            out[i] = prefix + item
    return out


def _flag_given(flag: str, args: list[str]) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _blocks(yaml_text: str) -> dict[str, str]:
    """The top-level keys of a block-style YAML mapping, each with its text (nested lines
    included)."""
    blocks: dict[str, str] = {}
    key = None
    for line in yaml_text.splitlines(keepends=True):
        m = re.match(r"([A-Za-z_][\w.-]*)\s*:", line)
        if m:
            key = m.group(1)
            blocks[key] = line
        elif key is not None and (line.startswith((" ", "\t")) or not line.strip()):
            blocks[key] += line
    return blocks


@dataclass(frozen=True)
class LaunchOptions:
    """What the user adds to a recipe when kvbench launches an engine: its interpreter
    (--engine-python), arguments after the recipe's (--engine-arg) and environment
    (--engine-env KEY=VALUE)."""

    python: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, python: str | None, args: Iterable[str], env: Iterable[str]) -> LaunchOptions:
        pairs = {}
        for item in env:
            key, eq, value = item.partition("=")
            if not eq or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise KvbenchError(f"--engine-env {item!r}: expected KEY=VALUE")
            pairs[key] = value
        return cls(python=python or None, args=tuple(args), env=pairs)

    @classmethod
    def for_engine(
        cls,
        label: str,
        labels: Iterable[str],
        python: Iterable[str],
        args: Iterable[str],
        env: Iterable[str],
    ) -> LaunchOptions:
        """The options for `label` among several engines: a value prefixed `ENGINE=`, with
        ENGINE one of `labels`, is that engine's only; an unprefixed one is every engine's."""
        labels = list(labels)

        def mine(values: Iterable[str]) -> list[str]:
            kept = []
            for value in values:
                engine, rest = split_engine_prefix(value, labels)
                if engine is None or engine == label:
                    kept.append(rest)
            return kept

        pythons = mine(python)
        if len(pythons) > 1:
            raise KvbenchError(f"{label}: more than one --engine-python applies")
        return cls.parse(pythons[0] if pythons else None, mine(args), mine(env))

    def __bool__(self) -> bool:
        return bool(self.python or self.args or self.env)

    def record(self) -> dict[str, Any]:
        """As given, credentials redacted."""
        return {
            "python": self.python,
            "args": redact_argv(list(self.args)),
            "env": redact_env(self.env),
        }


@dataclass(frozen=True)
class OptionalDefault:
    """Arguments added only where the installed engine defines the option (a newer flag that
    an older version would reject): some file matching one of `files`, under the package
    `package`, contains `defines`."""

    args: list[str]
    package: str
    files: list[str]
    defines: str


@dataclass(frozen=True)
class Recipe:
    engine: str
    command: list[str]
    health: str
    startup_timeout_s: float
    defaults: list[str]
    env: dict[str, str]
    settings: dict[str, str]  # launch flag → settings key
    capacity_sources: list[str]
    optional: list[OptionalDefault] = field(default_factory=list)
    config: str | None = None  # the engine's YAML options file, written at launch
    config_flags: list[str] = field(default_factory=list)  # how it is passed (first), aliases
    path: str | None = None

    @classmethod
    def load(cls, engine: str, directory: Traversable | Path = RECIPES) -> Recipe:
        path = directory / engine / "recipe.toml"
        try:
            data = tomllib.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise KvbenchError(f"{path}: no launch recipe for engine {engine!r}") from None
        except tomllib.TOMLDecodeError as err:
            raise KvbenchError(f"{path}: {err}") from None
        try:
            config = data.get("config", {})
            return cls(
                engine=data["engine"],
                command=list(data["command"]),
                health=data.get("health", "/health"),
                startup_timeout_s=float(data.get("startup_timeout_s", 600)),
                defaults=list(data.get("defaults", [])),
                env={k: str(v) for k, v in data.get("env", {}).items()},
                settings=dict(data.get("settings", {})),
                capacity_sources=list(data.get("capacity", {}).get("sources", [])),
                optional=[
                    OptionalDefault(
                        args=list(o["args"]),
                        package=o["package"],
                        files=list(o["files"]),
                        defines=o["defines"],
                    )
                    for o in data.get("optional_defaults", [])
                ],
                config=config.get("text"),
                config_flags=list(config.get("flags", [])),
                path=str(path),
            )
        except KeyError as err:
            raise KvbenchError(f"{path}: missing key {err.args[0]!r}") from None

    def argv(self, *, python: str, model: str, host: str, port: int, extra: list[str]) -> list[str]:
        """The full command: template, then each default whose flag `extra` does not set, then
        `extra`."""
        values = dict(python=python, model=model, host=host, port=str(port))
        argv = [part.format(**values) for part in self.command]
        given = {a.split("=", 1)[0] for a in extra if a.startswith("-")}
        defaults, i = [], 0
        while i < len(self.defaults):
            flag = self.defaults[i]
            takes_value = i + 1 < len(self.defaults) and not self.defaults[i + 1].startswith("-")
            group = self.defaults[i : i + (2 if takes_value else 1)]
            # --no-enable-x and --enable-x set the same option
            bare = flag.replace("--no-", "--")
            if flag not in given and bare not in {g.replace("--no-", "--") for g in given}:
                defaults += group
            i += len(group)
        return argv + defaults + list(extra)

    def read_settings(self, argv: list[str]) -> dict[str, str | int]:
        """Profile settings named on a command line (`--flag value` or `--flag=value`)."""
        found: dict[str, str | int] = {}
        for i, arg in enumerate(argv):
            flag, eq, value = arg.partition("=")
            if flag in self.settings:
                if not eq:
                    if i + 1 >= len(argv):
                        continue
                    value = argv[i + 1]
                found[self.settings[flag]] = int(value) if value.lstrip("-").isdigit() else value
        return found

    def write_config(self, extra: list[str], directory: Path) -> list[str]:
        """`extra` with the engine's options file passed once: the recipe's keys, merged into
        the user's own file when `extra` names one (the user's keys win; the engine would read
        only one of two such flags, so kvbench never passes its own beside the user's)."""
        if self.config is None or not self.config_flags:
            return extra
        rest, user_file = [], None
        i = 0
        while i < len(extra):
            flag, eq, value = extra[i].partition("=")
            if flag in self.config_flags:
                if not eq:
                    if i + 1 >= len(extra):
                        raise KvbenchError(f"--engine-arg {flag} needs a file")
                    value = extra[i + 1]
                    i += 1
                user_file = value
            else:
                rest.append(extra[i])
            i += 1
        text = ""
        if user_file is not None:
            try:
                text = Path(user_file).read_text()
            except OSError as err:
                raise KvbenchError(f"{user_file}: {err.strerror or err}") from None
            if text and not text.endswith("\n"):
                text += "\n"
        ours = _blocks(self.config.lstrip())
        theirs = _blocks(text)
        text += "".join(block for key, block in ours.items() if key not in theirs)
        path = directory / "engine-config.yaml"
        path.write_text(text)
        return rest + [self.config_flags[0], str(path)]


# `kvbench emulate` imports aiohttp and the Rust core and binds: seconds, even on a busy machine.
EMULATOR_STARTUP_TIMEOUT = 60.0


def emulator_recipe(engine: str) -> Recipe:
    """`kvbench emulate --engine ENGINE`, with the interpreter running kvbench; -P keeps the
    working directory off its module path."""
    return Recipe(
        engine=engine,
        command=[
            "{python}",
            "-P",
            "-m",
            "kvbench",
            "emulate",
            "--engine",
            engine,
            "--host",
            "{host}",
            "--port",
            "{port}",
        ],
        health="/health",
        startup_timeout_s=EMULATOR_STARTUP_TIMEOUT,
        defaults=[],
        env={},
        settings={},
        capacity_sources=["the emulator's own endpoints"],
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# Run with the engine's interpreter: whether a file of an installed package contains a name.
# find_spec on a top-level package locates it without running its __init__.
_DEFINES = """\
import importlib.util, pathlib, sys
spec = importlib.util.find_spec(sys.argv[1])
root = pathlib.Path(spec.origin).parent if spec and spec.origin else None
print(root is not None and any(
    sys.argv[2] in p.read_text(errors="replace") for g in sys.argv[3:] for p in root.glob(g)))
"""


def _engine_defines(python: str, option: OptionalDefault, env: dict[str, str], cwd: Path) -> bool:
    try:
        out = subprocess.run(
            [python, "-c", _DEFINES, option.package, option.defines, *option.files],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,  # a fresh directory: `-c` puts the working directory on the module path
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False  # the launch itself will say what is wrong with the interpreter
    return out.stdout.strip() == "True"


@dataclass
class LaunchedServer:
    """A server kvbench started; stop() ends its whole process group."""

    recipe: Recipe
    argv: list[str]
    process: subprocess.Popen
    url: str
    log_path: Path
    guard: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)  # what kvbench set, over its own env
    settings: dict[str, str | int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def record(self) -> dict[str, Any]:
        """What was launched, for the run's header and engine.json: credentials redacted."""
        return {
            "engine": self.recipe.engine,
            "pid": self.pid,
            "url": self.url,
            "log": str(self.log_path),
            "argv": redact_argv(self.argv),
            "env": redact_env(self.env),
        }

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 5) -> str:
        return " | ".join(self.log_text().strip().splitlines()[-lines:])

    def wait_healthy(self, timeout: float) -> None:
        url = self.url + self.recipe.health
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()  # the workers it started, if any
                raise EngineError(
                    f"{self.recipe.engine} exited with code {self.process.returncode} before "
                    f"{url} answered; log {self.log_path}: {self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise EngineError(
            f"{url}: {self.recipe.engine} not healthy after {timeout:.0f} s; log {self.log_path}"
        )

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the server's process group, wait for it (SIGKILL after `grace` seconds),
        then dismiss the guard."""
        # poll() reaps the server once it exits: a zombie would keep its group alive
        if self.process.poll() is None:
            stop_group(self.pid, grace, reap=self.process.poll)
        else:
            stop_group(self.pid, 2.0)  # workers left behind by a server that exited
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self.guard is not None:
            try:
                self.guard.communicate(b"q", timeout=5)
            except (subprocess.TimeoutExpired, OSError, ValueError):
                self.guard.kill()
            self.guard = None


def launch(
    engine: str,
    model: str,
    *,
    python: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    extra_args: list[str] | None = None,
    log_dir: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    recipe: Recipe | None = None,
    nice: int = 0,
) -> LaunchedServer:
    """Start `engine` serving `model` and return once it is healthy. `python` is the engine's
    interpreter (default: kvbench's own), `extra_args` go on its command line after the
    recipe's, and `env` over the recipe's environment. `nice` lowers the engine's CPU priority:
    where the engine shares a small CPU with kvbench (a CPU build in CI), its busy worker threads
    would otherwise delay kvbench's send timer."""
    recipe = recipe or Recipe.load(engine)
    port = port or free_port(host)
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix=f"kvbench-{engine}-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    python = python or sys.executable
    given_env = {"PYTHONSAFEPATH": "1", **recipe.env, **(env or {})}
    full_env = {**os.environ, **given_env}
    extra = recipe.write_config(list(extra_args or []), log_dir)
    for option in recipe.optional:
        if not _flag_given(option.args[0], extra) and _engine_defines(
            python, option, full_env, log_dir
        ):
            extra = option.args + extra
    argv = recipe.argv(python=python, model=model, host=host, port=port, extra=extra)
    log_path = log_dir / f"{engine}.log"
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(redact_argv(argv)) + "\n").encode())
        log.flush()
        try:
            # the guard first, so that no moment exists when the server runs unguarded
            guard = subprocess.Popen(
                [sys.executable, "-P", "-m", "kvbench.backends.guard", "20"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as err:
            raise KvbenchError(f"cannot start the server's guard: {err}") from None
        try:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=(lambda: os.nice(nice)) if nice else None,
            )
        except OSError as err:
            guard.communicate(b"")
            raise KvbenchError(f"cannot start {engine}: {argv[0]}: {err}") from None
    assert guard.stdin is not None
    guard.stdin.write(f"{process.pid}\n".encode())
    guard.stdin.flush()
    server = LaunchedServer(
        recipe=recipe,
        argv=argv,
        process=process,
        url=f"http://{host}:{port}",
        log_path=log_path,
        guard=guard,
        env=given_env,
        settings=recipe.read_settings(argv),
    )
    try:
        server.wait_healthy(timeout or recipe.startup_timeout_s)
    except BaseException:  # a Ctrl-C while it starts, too: nobody else holds the server yet
        server.stop()
        raise
    return server


def launched_servers(backend: Backend) -> list[LaunchedServer]:
    """The servers kvbench started for a backend (one per replica; none when attached)."""
    from kvbench.backends.replicas import RoundRobinBackend

    found = []
    for b in backend.replicas if isinstance(backend, RoundRobinBackend) else [backend]:
        server = getattr(b, "server", None)
        if server is not None:
            found.append(server)
    return found
