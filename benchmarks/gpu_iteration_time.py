"""Measure one engine iteration's duration for a Llama-3-8B-shaped model on a GPU, as timing
windows that `kvbench calibrate` fits to the simulator's iteration-time model
b = c0 + c1·(tokens in the batch) + c2·(KV tokens attended).

The model has random weights (no hub is reachable) in bf16, run by PyTorch + transformers'
eager/SDPA forward with a KV cache. Iteration time depends on shapes, not on weight values, so
random weights time the same arithmetic a trained model would; but these are transformers'
kernels, not vLLM's, SGLang's or TensorRT-LLM's, so the fit is a calibration of the model's
arithmetic on this GPU, not of any engine.

Each iteration is timed twice with CUDA events (median of repeats after warm-up): run eagerly,
which includes PyTorch's per-kernel launch cost from Python (about 20 ms for 32 layers, so small
batches are launch-bound), and replayed as a CUDA graph, which times the kernels alone, as the
engines' CUDA-graph decode does. Each mode gets its own CSV. Two kinds of iteration:
  decode:  B sequences each holding L cached tokens take one token  → batch = B, kv = B·(L+1)
  prefill: one sequence takes a chunk of T tokens after C cached    → batch = T, kv = C+T
Usage (on a GPU machine), then the fit (here or there):
    python benchmarks/gpu_iteration_time.py --out h200/
    kvbench calibrate --windows h200/iterations-eager.csv --output h200/fit-eager.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=16384,
    rope_theta=500000.0,
    torch_dtype="bfloat16",
)


def timed(fn, repeats: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    if DEVICE == "cpu":
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    return statistics.median(times)


def graphed(fn):
    """`fn` captured as one CUDA graph, so replaying it times the kernels alone, as engines do
    with their CUDA-graph decode; None where the forward cannot be captured (a host sync)."""
    if DEVICE == "cpu":
        return None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            fn()
    except RuntimeError as err:
        print(f"not capturable: {str(err).splitlines()[0]}", flush=True)
        return None
    return graph.replay


def eager_and_graph(fn) -> tuple[float, float | None]:
    """Median seconds of `fn` run eagerly and replayed as a CUDA graph (None if not capturable)."""
    eager = timed(fn)
    replay = graphed(fn)
    graph = timed(replay) if replay is not None else None
    del replay
    torch.cuda.empty_cache()
    return eager, graph


@torch.inference_mode()
def filled_cache(model, batch: int, length: int) -> DynamicCache:
    cache = DynamicCache()
    ids = torch.randint(1000, 30000, (batch, length), device=DEVICE)
    # Prefill in slices of sequences so activation memory stays bounded.
    step = max(1, 65536 // length)
    parts = []
    for i in range(0, batch, step):
        c = DynamicCache()
        model(input_ids=ids[i : i + step], past_key_values=c, use_cache=True, logits_to_keep=1)
        parts.append(c)
    for layer in range(len(parts[0].layers)):
        keys = torch.cat([p.layers[layer].keys for p in parts], dim=0)
        values = torch.cat([p.layers[layer].values for p in parts], dim=0)
        cache.update(keys, values, layer)
    return cache


@torch.inference_mode()
def decode_time(model, batch: int, length: int) -> tuple[float, float | None]:
    cache = filled_cache(model, batch, length)
    ids = torch.randint(1000, 30000, (batch, 1), device=DEVICE)
    position = torch.full((batch, 1), length, device=DEVICE)

    def step():
        model(
            input_ids=ids,
            past_key_values=cache,
            position_ids=position,
            use_cache=True,
            logits_to_keep=1,
        )
        for layer in cache.layers:  # drop the token just appended so every repeat is alike
            layer.keys = layer.keys[:, :, :length]
            layer.values = layer.values[:, :, :length]

    return eager_and_graph(step)


@torch.inference_mode()
def prefill_time(model, chunk: int, cached: int) -> tuple[float, float | None]:
    cache = filled_cache(model, 1, cached) if cached else None
    ids = torch.randint(1000, 30000, (1, chunk), device=DEVICE)
    position = torch.arange(cached, cached + chunk, device=DEVICE)[None]

    def step():
        model(
            input_ids=ids,
            past_key_values=cache if cache is not None else DynamicCache(),
            position_ids=position,
            use_cache=True,
            logits_to_keep=1,
        )
        if cache is not None:
            for layer in cache.layers:
                layer.keys = layer.keys[:, :, :cached]
                layer.values = layer.values[:, :, :cached]

    return eager_and_graph(step)


DEVICE = "cuda"


def main() -> None:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for the CSVs and meta.json")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a 2-layer toy model on the CPU, to check the script without a GPU",
    )
    args = parser.parse_args()
    DEVICE = "cpu" if args.smoke else "cuda"
    started = time.time()
    torch.manual_seed(0)
    shape = (
        dict(
            LLAMA3_8B,
            num_hidden_layers=2,
            hidden_size=256,
            intermediate_size=512,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        if args.smoke
        else LLAMA3_8B
    )
    config = LlamaConfig(**shape)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    print(f"model ready in {time.time() - started:.0f}s", flush=True)

    rows = []
    for batch in (1, 16, 64, 128, 256):
        for length in (256, 1024, 2048):
            if batch * length > 262144:
                continue
            eager, graph = decode_time(model, batch, length)
            rows.append(
                dict(
                    kind="decode",
                    batch_tokens=batch,
                    kv_tokens=batch * (length + 1),
                    seconds=eager,
                    graph_seconds=graph,
                )
            )
            print(rows[-1], flush=True)
    for chunk in (128, 512, 1024, 2048, 4096, 8192):
        for cached in (0, 4096):
            eager, graph = prefill_time(model, chunk, cached)
            rows.append(
                dict(
                    kind="prefill",
                    batch_tokens=chunk,
                    kv_tokens=cached + chunk,
                    seconds=eager,
                    graph_seconds=graph,
                )
            )
            print(rows[-1], flush=True)

    write_results(
        Path(args.out),
        rows,
        dict(
            gpu=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke)",
            torch=torch.__version__,
            transformers=__import__("transformers").__version__,
            model="Llama-3-8B shape, random bf16",
            peak_gpu_bytes=torch.cuda.max_memory_allocated() if DEVICE == "cuda" else None,
            wall_seconds=time.time() - started,
        ),
    )


def write_results(out: Path, rows: list[dict], meta: dict) -> None:
    """One CSV of timing windows per timing mode, in the format `kvbench calibrate --windows`
    fits, and meta.json saying what was measured where."""
    out.mkdir(parents=True, exist_ok=True)
    for mode, key in (("eager", "seconds"), ("cuda-graph", "graph_seconds")):
        timed_rows = [r for r in rows if r[key] is not None]
        if not timed_rows:
            continue
        lines = ["kind,batch_tokens,kv_tokens,elapsed"]
        lines += [
            f"{r['kind']},{r['batch_tokens']},{r['kv_tokens']},{r[key]:.9f}" for r in timed_rows
        ]
        (out / f"iterations-{mode}.csv").write_text("\n".join(lines) + "\n")
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
