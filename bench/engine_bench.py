"""Offline engine throughput and batch-1 decode latency.

    python -m bench.engine_bench --model DIR [--cases 1x512x128,32x512x128] [--json out.json]
    python -m bench.engine_bench --preset llama-3.1-8b   # real shapes, random weights (GPU)
    python -m bench.engine_bench --preset llama-3.1-8b --check-graphs   # first: CUDA-graph decode == eager?

A case BxPxO runs B requests of P prompt tokens and O output tokens. Decode GB/s
counts the bytes a step must read at least (all weights + the KV of every running
sequence) over the step time; on CUDA it is also shown as a fraction of the
measured device copy bandwidth (bytes read + written by a 1 GiB copy).

On CUDA, decode steps replay captured CUDA graphs unless --enforce-eager.
--check-graphs first runs the same greedy requests with eager decode steps and with
graph replays, in the same engine (same weights), and prints whether the tokens are
identical and how far one decode step's logits differ between the two paths.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time


def copy_bandwidth_gbps(torch) -> float | None:
    if not torch.cuda.is_available():
        return None
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / 20
    return 2 * src.numel() / seconds / 1e9


def matmul_tflops(torch) -> float | None:
    """bf16 8192^3 matrix product on random data (the measured ceiling for prefill MFU)."""
    if not torch.cuda.is_available():
        return None
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * 8192**3 * 10 / (start.elapsed_time(end) / 1000) / 1e12


def prefill_flops(engine, prompt_len: int) -> float | None:
    """FLOPs of one prompt's prefill: every layer's weights on every token, causal attention, logits of the last
    token. None for MoE models (a token reads only its experts)."""
    from engine.moe import SparseMoE

    model = engine.runner.model
    if any(isinstance(m, SparseMoE) for m in model.modules()):
        return None
    layer_params = sum(p.numel() for p in model.model.layers.parameters())
    attn = model.attention_layers()[0]
    pairs = prompt_len * (prompt_len + 1) / 2  # causal (query, key) pairs
    attention = 4 * len(model.attention_layers()) * attn.num_heads * attn.head_dim * pairs
    return 2 * layer_params * prompt_len + attention + 2 * model.lm_head.weight.numel()


def sync(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_case(engine, torch, batch: int, prompt_len: int, output_len: int, weight_bytes: int) -> dict:
    from contracts.sampling import SamplingParams

    vocab = engine.runner.vocab_size
    rng = random.Random(batch * 7919 + prompt_len)
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"b{batch}-{prompt_len}-{i}", [rng.randrange(vocab) for _ in range(prompt_len)], params)
    sync(torch)
    retries = alloc_retries(torch)
    t0 = time.perf_counter()
    while engine.scheduler.waiting or any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running):
        engine.step()  # prefill (chunked under the token budget) + first tokens
    sync(torch)
    t1 = time.perf_counter()
    runs = ModelRunCounter(engine.runner)
    while engine.has_unfinished():
        engine.step()  # with async decode the last call only emits: count model runs, not calls
    sync(torch)
    t2 = time.perf_counter()
    steps = runs.stop()
    spec = engine.runner.kv_spec
    kv_bytes_per_token = (
        2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * torch.tensor([], dtype=spec.dtype).element_size()
    )
    mean_context = prompt_len + output_len / 2
    step_s = (t2 - t1) / max(steps, 1)
    bytes_per_step = weight_bytes + batch * mean_context * kv_bytes_per_token
    flops = prefill_flops(engine, prompt_len)
    return {
        "case": f"{batch}x{prompt_len}x{output_len}",
        "prefill_tok_s": batch * prompt_len / (t1 - t0),
        "prefill_TFLOP_s": batch * flops / (t1 - t0) / 1e12 if flops else float("nan"),
        "decode_tok_s": batch * steps / max(t2 - t1, 1e-9),
        "decode_step_ms": 1000 * step_s,
        "decode_GB_s": bytes_per_step / step_s / 1e9,
        "alloc_retries": alloc_retries(torch) - retries,  # the caching allocator freed its cache and retried a malloc
    }


def alloc_retries(torch) -> int:
    return torch.cuda.memory_stats().get("num_alloc_retries", 0) if torch.cuda.is_available() else 0


class ModelRunCounter:
    """Counts the runner's forward launches (``execute``, ``execute_ahead``) until ``stop()``.

    With async decode the last ``step()`` call of a run only emits, so calls overcount steps.
    """

    def __init__(self, runner) -> None:
        self.runner, self.count = runner, 0
        self.names = [name for name in ("execute", "execute_ahead") if hasattr(runner, name)]
        for name in self.names:
            setattr(runner, name, self._counted(getattr(runner, name)))

    def _counted(self, fn):
        def wrapper(*args, **kwargs):
            self.count += 1
            return fn(*args, **kwargs)

        return wrapper

    def stop(self) -> int:
        for name in self.names:
            delattr(self.runner, name)  # the class's methods again
        return self.count


def _generate(engine, prompts: list[list[int]], params, tag: str) -> list[list[int]]:
    for i, prompt in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", prompt, params)
    outs: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                outs[o.request_id] = o.output_token_ids
    return [outs[f"{tag}-{i}"] for i in range(len(prompts))]


def _step_logits_diff(engine, torch, prompts: list[list[int]], params) -> tuple[float, float]:
    """(max |eager - graph| logit, max |logit|) over one decode step of ``prompts``, same metadata."""
    runner = engine.runner
    async_decode, engine.config.async_decode = engine.config.async_decode, False  # plan below on a drained state
    for i, prompt in enumerate(prompts):
        engine.add_request(f"logits-{i}", prompt, params)
    while any(s.num_computed_tokens < s.num_tokens - 1 for s in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()  # prefill and first tokens: every sequence now needs exactly one decode token
    plan = engine.scheduler.schedule().plan
    eager = runner.forward(runner.prepare(plan)[0])  # [S, V]
    graph, _ = runner.graphs.run(plan)
    diff, scale = (eager - graph).abs().max().item(), eager.abs().max().item()
    for i in range(len(prompts)):
        engine.abort(f"logits-{i}")
    engine.config.async_decode = async_decode
    return diff, scale


def check_graphs(engine, torch, output_len: int = 32) -> dict:
    """Greedy tokens with eager decode steps vs graph replays (batches 1, 5 and 19: exact and padded buckets)."""
    from contracts.sampling import SamplingParams

    runner = engine.runner
    if runner.graphs is None:
        print("check-graphs: no CUDA graphs here (CPU, --enforce-eager, TP > 1, or capture failed: see the log)")
        return {"graphs": False}
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    rng = random.Random(11)
    vocab = runner.vocab_size
    total = same = 0
    report: dict = {"graphs": True, "buckets": runner.graphs.buckets, "batches": []}
    for batch in (1, 5, 19):
        prompts = [[rng.randrange(vocab) for _ in range(rng.randrange(8, 300))] for _ in range(batch)]
        runs = {}
        for use_graphs in (False, True):
            runner.use_graphs = use_graphs
            runs[use_graphs] = _generate(engine, prompts, params, f"check{batch}-{int(use_graphs)}")
        runner.use_graphs = True
        firsts = [next((j for j, (a, b) in enumerate(zip(e, g)) if a != b), None) for e, g in zip(runs[False], runs[True])]
        diverged = [j for j in firsts if j is not None]
        diff, scale = _step_logits_diff(engine, torch, prompts, params)
        total += batch
        same += batch - len(diverged)
        report["batches"].append(
            {
                "batch": batch,
                "identical": batch - len(diverged),
                "first_divergence": min(diverged, default=None),
                "logits_max_abs_diff": diff,
                "logits_max_abs": scale,
            }
        )
        print(
            f"check-graphs: batch {batch:>2}: {batch - len(diverged)}/{batch} requests identical over {output_len} tokens"
            + (f" (earliest divergence at output token {min(diverged)})" if diverged else "")
            + f"; one decode step: max |eager - graph| logit {diff:.3g} (max |logit| {scale:.3g})"
        )
    report["identical"] = same == total
    print(f"check-graphs: {'IDENTICAL' if same == total else 'DIFFERENT'}: {same}/{total} requests produce the same tokens")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF checkpoint directory")
    parser.add_argument("--preset", help="real model shapes with random weights (bench/model_presets.py)")
    parser.add_argument("--cases", default="1x128x64,16x128x64", help="comma-separated BxPxO cases")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--json", default=None, help="write results here")
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs: every step runs eagerly")
    parser.add_argument("--check-graphs", action="store_true", help="first compare graph and eager decode tokens")
    args = parser.parse_args(argv)
    if not args.model and not args.preset:
        parser.error("give --model DIR or --preset NAME")

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.model_runner import ModelRunner

    model, load_format = args.model, "safetensors"
    if args.preset:
        from bench.model_presets import write_preset

        model, load_format = str(write_preset(args.preset, tempfile.mkdtemp(prefix="preset-"))), "dummy"
    engine = LLMEngine(
        EngineConfig(
            model=model,
            dtype=args.dtype,
            enable_prefix_caching=False,
            load_format=load_format,
            max_num_batched_tokens=args.max_num_batched_tokens,
            enforce_eager=args.enforce_eager,
        )
    )
    runner = engine.runner
    assert isinstance(runner, ModelRunner)  # tensor_parallel_size 1: the model runs in this process
    weight_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    checked = check_graphs(engine, torch) if args.check_graphs else None
    copy_gbps = copy_bandwidth_gbps(torch)
    matmul = matmul_tflops(torch)
    run_case(engine, torch, 1, 16, 4, weight_bytes)  # warm-up: kernels compiled, allocator primed
    cases = [tuple(int(x) for x in case.split("x")) for case in args.cases.split(",")]
    for p in sorted({p for _, p, _ in cases}):
        run_case(engine, torch, 1, p, 2, weight_bytes)  # untimed: the prefill kernels of this prompt length compiled
    rows = []
    for b, p, o in cases:
        row = run_case(engine, torch, b, p, o, weight_bytes)
        if copy_gbps:
            row["decode_bw_fraction"] = row["decode_GB_s"] / copy_gbps
        if matmul:
            row["prefill_MFU"] = row["prefill_TFLOP_s"] / matmul
        rows.append(row)
    header = {
        "model": args.preset or args.model,
        "weights": "random" if load_format == "dummy" else "checkpoint",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "dtype": str(engine.runner.dtype).removeprefix("torch."),
        "weight_GB": weight_bytes / 1e9,
        "copy_GB_s": copy_gbps,
        "matmul_TFLOP_s": matmul,
        "torch": torch.__version__,
        "cuda_graphs": runner.graphs is not None,
    }
    print(json.dumps(header))
    cols = list(rows[0])
    print(" | ".join(f"{c:>14}" for c in cols))
    for row in rows:
        print(" | ".join(f"{row[c]:>14.3f}" if isinstance(row[c], float) else f"{row[c]:>14}" for c in cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows, "check_graphs": checked}, f, indent=2)


if __name__ == "__main__":
    main()
