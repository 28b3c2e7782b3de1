"""Launching an engine from its recipe (backends/<engine>/recipe.toml): start it with a model
path, wait for health with a timeout, keep its log, and stop it by its own process id.

A recipe is data: the command template, the modelling defaults kvbench adds unless the user's
extra arguments set the same flag, the launch flags that are profile settings, and where M is
read. Servers bind to 127.0.0.1 unless told otherwise. kvbench's own emulator is launched the
same way, from a recipe built in code (`emulator_recipe`): it ships inside the package.

A server runs in its own session, so a Ctrl-C at the terminal reaches kvbench alone: kvbench
saves what it measured and then stops the server itself, by its pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kvbench.errors import KvbenchError

RECIPES = Path(__file__).resolve().parents[2] / "backends"


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
    config: str | None = None
    path: Path | None = None

    @classmethod
    def load(cls, engine: str, directory: Path = RECIPES) -> Recipe:
        path = directory / engine / "recipe.toml"
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise KvbenchError(f"{path}: no launch recipe for engine {engine!r}") from None
        except tomllib.TOMLDecodeError as err:
            raise KvbenchError(f"{path}: {err}") from None
        try:
            return cls(
                engine=data["engine"],
                command=list(data["command"]),
                health=data.get("health", "/health"),
                startup_timeout_s=float(data.get("startup_timeout_s", 600)),
                defaults=list(data.get("defaults", [])),
                env={k: str(v) for k, v in data.get("env", {}).items()},
                settings=dict(data.get("settings", {})),
                capacity_sources=list(data.get("capacity", {}).get("sources", [])),
                config=data.get("config"),
                path=path,
            )
        except KeyError as err:
            raise KvbenchError(f"{path}: missing key {err.args[0]!r}") from None

    def argv(
        self, *, python: str, model: str, host: str, port: int, config: str | None, extra: list[str]
    ) -> list[str]:
        """The full command: template, then each default whose flag `extra` does not set, then
        `extra`."""
        values = dict(python=python, model=model, host=host, port=str(port), config=config or "")
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


# `kvbench emulate` imports aiohttp and the Rust core and binds: seconds, even on a busy machine.
EMULATOR_STARTUP_TIMEOUT = 60.0


def emulator_recipe(engine: str) -> Recipe:
    """`kvbench emulate --engine ENGINE`, with the interpreter running kvbench."""
    return Recipe(
        engine=engine,
        command=[
            "{python}",
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


@dataclass
class LaunchedServer:
    """An engine process kvbench started; stop() ends it by its own pid."""

    recipe: Recipe
    argv: list[str]
    process: subprocess.Popen
    url: str
    log_path: Path
    settings: dict[str, str | int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

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
                raise KvbenchError(
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
        raise KvbenchError(
            f"{url}: {self.recipe.engine} not healthy after {timeout:.0f} s; log {self.log_path}"
        )

    def stop(self, grace: float = 20.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


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
    """Start `engine` serving `model` and return once it is healthy. `nice` lowers the engine's
    CPU priority: where the engine shares a small CPU with kvbench (a CPU build in CI), its busy
    worker threads would otherwise delay kvbench's send timer."""
    recipe = recipe or Recipe.load(engine)
    port = port or free_port(host)
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix=f"kvbench-{engine}-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    config_path = None
    if recipe.config is not None:
        config_path = log_dir / "engine-config.yaml"
        config_path.write_text(recipe.config.lstrip())
    argv = recipe.argv(
        python=python or sys.executable,
        model=model,
        host=host,
        port=port,
        config=str(config_path) if config_path else None,
        extra=list(extra_args or []),
    )
    log_path = log_dir / f"{engine}.log"
    full_env = {**os.environ, **recipe.env, **(env or {})}
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
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
            raise KvbenchError(f"cannot start {engine}: {argv[0]}: {err}") from None
    server = LaunchedServer(
        recipe=recipe,
        argv=argv,
        process=process,
        url=f"http://{host}:{port}",
        log_path=log_path,
        settings=recipe.read_settings(argv),
    )
    server.wait_healthy(timeout or recipe.startup_timeout_s)
    return server
