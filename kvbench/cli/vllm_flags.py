"""The spellings of `vllm bench serve` that mean what a kvbench flag means, accepted beside
kvbench's own so that a command line people already use carries over. Only spellings whose
meaning matches are taken; each is turned into kvbench's own setting here, before a command runs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from kvbench.errors import KvbenchError

# vllm bench serve's defaults for its random dataset (RandomDataset in vllm/benchmarks/datasets.py)
RANDOM_INPUT_LEN = 1024
RANDOM_OUTPUT_LEN = 128
RANDOM_RANGE_RATIO = 0.0
RANDOM_FLAGS = ("dataset_name", "random_input_len", "random_output_len", "random_range_ratio")


def random_workload(input_len: int, output_len: int, range_ratio: float) -> str:
    """vLLM's random dataset as a kvbench workload spec.

    vLLM (vllm/benchmarks/datasets.py, RandomDataset.get_sampling_params) draws each prompt length
    uniformly from the integers [floor(I·(1−r)), ceil(I·(1+r))] and each output length from
    [floor(O·(1−r)), ceil(O·(1+r))] with the output's lower end at least 1, independently, for
    r in [0, 1): exactly kvbench's uniform:S_LO-S_HI,O_LO-O_HI. vLLM first takes the tokenizer's
    special tokens off I; kvbench sends token ids and adds none, so I is the prompt's length as
    given. A prompt has at least one token here (vLLM's lower end may reach 0 as r nears 1)."""
    for value, flag in ((input_len, "--random-input-len"), (output_len, "--random-output-len")):
        if value < 1:
            raise KvbenchError(f"{flag} must be a whole number of tokens ≥ 1, got {value}")
    if not (0.0 <= range_ratio < 1.0):
        raise KvbenchError(f"--random-range-ratio must be in [0, 1), got {range_ratio}")
    s_lo = max(1, math.floor(input_len * (1 - range_ratio)))
    s_hi = math.ceil(input_len * (1 + range_ratio))
    o_lo = max(1, math.floor(output_len * (1 - range_ratio)))
    o_hi = max(1, math.ceil(output_len * (1 + range_ratio)))
    return f"uniform:{s_lo}-{s_hi},{o_lo}-{o_hi}"


def random_dataset(workload_param: str) -> Callable:
    """--dataset-name random, --random-input-len, --random-output-len, --random-range-ratio on a
    command whose workload parameter is `workload_param`: any of them sets the workload to
    random_workload(...) (vLLM's defaults for the ones not given); with --workload too, refused."""
    decorators = [
        click.option(
            "--dataset-name",
            metavar="random",
            default=None,
            help="vllm bench serve's spelling: 'random' is --workload uniform:… from the "
            "--random-* lengths (a trace file goes to --workload).",
        ),
        click.option(
            "--random-input-len",
            type=int,
            default=RANDOM_INPUT_LEN,
            show_default=True,
            metavar="I",
            help="With --dataset-name random: the mean prompt length in tokens.",
        ),
        click.option(
            "--random-output-len",
            type=int,
            default=RANDOM_OUTPUT_LEN,
            show_default=True,
            metavar="O",
            help="With --dataset-name random: the mean output length in tokens.",
        ),
        click.option(
            "--random-range-ratio",
            type=float,
            default=RANDOM_RANGE_RATIO,
            show_default=True,
            metavar="R",
            help="With --dataset-name random: lengths uniform on [I·(1−R), I·(1+R)] and "
            "[O·(1−R), O·(1+R)], as vLLM draws them.",
        ),
    ]

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def command(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            given = {k: kwargs.pop(k) for k in RANDOM_FLAGS}
            named = [
                k for k in RANDOM_FLAGS if ctx.get_parameter_source(k) != ParameterSource.DEFAULT
            ]
            if named:
                name = given["dataset_name"]
                if name is not None and name != "random":
                    raise KvbenchError(
                        f"--dataset-name {name}: kvbench generates only 'random'; give a trace "
                        "file with --workload FILE"
                    )
                if ctx.get_parameter_source(workload_param) != ParameterSource.DEFAULT:
                    raise KvbenchError(
                        "--workload and --dataset-name/--random-* both say what to send; give one"
                    )
                kwargs[workload_param] = random_workload(
                    given["random_input_len"],
                    given["random_output_len"],
                    given["random_range_ratio"],
                )
            return f(*args, **kwargs)

        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return decorate
