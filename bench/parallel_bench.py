"""Tensor/expert parallelism: greedy parity and TP=1 vs TP=2 / EP=2 timings.

    python -m bench.parallel_bench --out DIR            # GPU: parity + Llama-3.1-8B and Qwen3-30B-A3B shapes
    python -m bench.parallel_bench --out DIR --parity-only --size tiny   # CPU smoke

Parity: random-weight safetensors checkpoints (the same weights for every TP
size) must give the same greedy tokens at TP=1, TP=2 and (MoE) EP=2.
Timing: real shapes with random (dummy) weights; a case BxPxO runs B requests of
P prompt tokens and O output tokens (prefill tok/s, decode step ms). The
all-reduce column times NCCL/gloo all-reduces of one step's activations alone
(2 per layer + 1 for the embedding, [T, hidden] in the model dtype) in a
separate pair of processes, so it shows what the step's communication costs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path

PARITY_PROMPTS = [[(7 * i + 3) % 300 + 5 for i in range(45)], [100, 3, 77], [42, 43, 44, 45, 46]]


def _free(engine, torch) -> None:
    engine.shutdown()
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def greedy(model: str, max_tokens: int, **kw) -> list[list[int]]:
    import torch

    from contracts.sampling import SamplingParams
    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine

    engine = LLMEngine(EngineConfig(model=model, dtype="float32", num_kv_blocks=256, **kw))
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    for i, p in enumerate(PARITY_PROMPTS):
        engine.add_request(f"p{i}", p, params)
    done: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                done[o.request_id] = o.output_token_ids
    _free(engine, torch)
    return [done[f"p{i}"] for i in range(len(PARITY_PROMPTS))]


def parity(size: str, max_tokens: int) -> list[dict]:
    from engine.make_model import make_model

    root = Path(tempfile.mkdtemp(prefix="parity-"))
    rows = []
    for arch in ("llama", "qwen3", "qwen3-moe"):
        model = str(make_model(arch, root / arch, size=size))
        ref = greedy(model, max_tokens)
        variants = {"tp2": dict(tensor_parallel_size=2)}
        if arch == "qwen3-moe":
            variants["ep2"] = dict(tensor_parallel_size=2, expert_parallel=True)
        for name, kw in variants.items():
            out = greedy(model, max_tokens, **kw)
            rows.append(
                {"arch": arch, "size": size, "variant": name, "equal_to_tp1": out == ref, "tokens_checked": sum(map(len, ref))}
            )
            print(
                f"parity {arch:10s} {name}: {'EQUAL' if out == ref else 'DIFFERENT'} to TP=1 over {sum(map(len, ref))} tokens",
                flush=True,
            )
    return rows


def timing(preset: str, layers: int | None, cases: list[tuple[int, int, int]], **kw) -> list[dict]:
    import torch

    from bench.engine_bench import run_case
    from bench.model_presets import write_preset
    from engine.config import EngineConfig
    from engine.executor import ParallelExecutor
    from engine.llm_engine import LLMEngine

    overrides = {"num_hidden_layers": layers} if layers else {}
    model = str(write_preset(preset, tempfile.mkdtemp(prefix="preset-"), **overrides))
    engine = LLMEngine(
        EngineConfig(
            model=model, load_format="dummy", enable_prefix_caching=False, num_kv_blocks=4096, max_num_batched_tokens=2048, **kw
        )
    )
    runner = engine.runner.runner if isinstance(engine.runner, ParallelExecutor) else engine.runner  # rank 0's ModelRunner
    weight_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    run_case(engine, torch, 1, 16, 4, weight_bytes)  # warm-up: kernels compiled, allocator primed
    rows = []
    for b, p, o in cases:
        row = run_case(engine, torch, b, p, o, weight_bytes)
        row.update(
            preset=preset,
            layers=runner.hf_config.num_hidden_layers,
            tp=kw.get("tensor_parallel_size", 1),
            ep=bool(kw.get("expert_parallel")),
            rank0_weight_GB=weight_bytes / 1e9,
        )
        rows.append(row)
        print(
            f"{preset} tp={row['tp']} ep={row['ep']} {row['case']}: prefill {row['prefill_tok_s']:.0f} tok/s, "
            f"decode step {row['decode_step_ms']:.2f} ms",
            flush=True,
        )
    _free(engine, torch)
    return rows


def _allreduce_rank(rank: int, port: int, shapes: list[tuple[int, int]], reps: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    result = {}
    for tokens, hidden in shapes:
        x = torch.ones(tokens, hidden, dtype=dtype, device=dev)  # [T, H]
        for _ in range(5):
            dist.all_reduce(x)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            dist.all_reduce(x)
        if cuda:
            torch.cuda.synchronize()
        result[f"{tokens}x{hidden}"] = (time.perf_counter() - t0) / reps * 1e3
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def allreduce_ms(shapes: list[tuple[int, int]], reps: int = 50) -> dict[str, float]:
    """Mean ms of one all-reduce of [T, H] between 2 ranks, per shape."""
    import multiprocessing

    from contracts.ports import free_port

    out = tempfile.mktemp(suffix=".json")
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_allreduce_rank, args=(r, port, shapes, reps, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="directory for parallel_bench.json")
    parser.add_argument("--size", default="small", choices=["tiny", "small"], help="parity checkpoint size")
    parser.add_argument("--parity-only", action="store_true")
    parser.add_argument(
        "--allreduce-only",
        action="store_true",
        help="only time the all-reduces a TP=2 step makes (2 GPUs), per call and per step",
    )
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args(argv)
    out = Path(args.out) / "parallel_bench.json"
    results: dict = {"device": None, "parity": [], "timing": [], "allreduce_ms": {}}
    import torch

    results["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"

    def save() -> None:
        out.write_text(json.dumps(results, indent=1))

    hidden = {"llama-3.1-8b": (4096, 32), "qwen3-30b-a3b": (2048, 48)}
    if args.allreduce_only:
        per_call = allreduce_ms(sorted({(t, h) for h, _ in hidden.values() for t in (1, 32, 2048)}))
        results["allreduce_ms"] = per_call
        save()
        print("| model | tokens in step | all-reduce ms/call | calls/step (2 per layer + LM head) | all-reduce ms/step |")
        print("|---|---:|---:|---:|---:|")
        for preset, (h, layers) in hidden.items():
            for t in (1, 32, 2048):
                ms = per_call[f"{t}x{h}"]
                print(f"| {preset} | {t} | {ms:.4f} | {2 * layers + 1} | {(2 * layers + 1) * ms:.2f} |")
        return
    results["parity"] = parity(args.size, args.max_tokens)
    save()
    if args.parity_only:
        return
    cases = [(1, 128, 32), (32, 128, 32), (4, 2048, 2)]
    for preset, kws in (
        ("llama-3.1-8b", [{}, {"tensor_parallel_size": 2}]),
        ("qwen3-30b-a3b", [{}, {"tensor_parallel_size": 2, "expert_parallel": True}]),
    ):
        for kw in kws:
            results["timing"] += timing(preset, None, cases, **kw)
            save()
    shapes = sorted({(t, h) for h, _ in hidden.values() for t in {b for b, _, _ in cases} | {2048}})
    per_call = allreduce_ms(shapes)
    for row in results["timing"]:
        if row["tp"] == 1:
            continue
        h, layers = hidden[row["preset"]]
        b, p, _ = (int(x) for x in row["case"].split("x"))
        calls = 2 * layers + 1
        row["allreduce_decode_step_ms"] = calls * per_call[f"{b}x{h}"]
        row["allreduce_prefill_2048_tok_step_ms"] = calls * per_call[f"2048x{h}"]
    results["allreduce_ms"] = per_call
    save()
    print_table(results)


def print_table(results: dict) -> None:
    print(f"\ndevice: {results['device']} (random weights, real shapes)")
    print(
        "| model | parallel | case BxPxO | prefill tok/s | decode step ms | all-reduce ms/decode step | all-reduce "
        "ms/2048-tok step |"
    )
    print("|---|---|---|---:|---:|---:|---:|")
    for r in results["timing"]:
        par = "TP=1" if r["tp"] == 1 else ("EP=2 (attn TP=2)" if r["ep"] else f"TP={r['tp']}")
        ar = r.get("allreduce_decode_step_ms")
        arp = r.get("allreduce_prefill_2048_tok_step_ms")
        print(
            f"| {r['preset']} | {par} | {r['case']} | {r['prefill_tok_s']:.0f} | {r['decode_step_ms']:.2f} | "
            f"{'-' if ar is None else f'{ar:.2f}'} | {'-' if arp is None else f'{arp:.2f}'} |"
        )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
