"""Where a decode step's time goes: GPU kernels by kind (torch profiler) and host phases of ``LLMEngine.step``.

    python -m bench.decode_profile --preset llama-3.1-8b --cases 1x512x24,256x1000x12 --json out.json
    python -m bench.decode_profile --prefill --cases 2x8192 --json out.json   # prompt steps instead

With ``--prefill`` a case BxP profiles the steps that prefill B prompts of P tokens (one
prompt per step up to the 8192-token budget), kernels only.

For each case BxPxO: B requests of P prompt tokens are prefilled, then O decode steps
are timed twice: once under ``torch.profiler`` (kernel time per step, grouped into
GEMM / attention / fused elementwise / other, plus the top kernels) and once with
plain timers around the phases of a step (schedule, execute = host prep + launch +
sampling launch; execute_ahead = the same for a step launched before the last one's tokens
are read), advance, emit = waiting for the sampled tokens + detokenize/stop checks).
GPU figures are per step; "GPU busy" over wall shows how much of a step the GPU idles.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import random
import re
import tempfile
import time

KINDS = (
    ("gemm", re.compile(r"nvjet|gemm|cutlass|sm90_|splitk|splitK|cublas|Kernel2", re.I)),
    ("attention", re.compile(r"paged_attention|merge_splits", re.I)),
    ("fused", re.compile(r"_rms_norm|_rope_and_cache|_silu_and_mul", re.I)),
)


def kind_of(name: str) -> str:
    return next((k for k, pattern in KINDS if pattern.search(name)), "other")


def prefill(engine, batch: int, prompt_len: int, steps: int) -> None:
    from contracts.sampling import SamplingParams

    rng = random.Random(batch)
    # every request must outlive the prefill steps (chunked: early prompts decode meanwhile) and the timed steps
    params = SamplingParams(temperature=0, max_tokens=batch * prompt_len // 2048 + 2 * steps + 8, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"p{batch}-{i}", [rng.randrange(engine.runner.vocab_size) for _ in range(prompt_len)], params)
    while engine.scheduler.waiting or any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running):
        engine.step()
    for _ in range(3):
        engine.step()  # warm decode steps


def kernel_profile(engine, torch, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / steps
    per_kind: dict[str, float] = collections.defaultdict(float)
    kernels = []
    for ev in prof.key_averages():
        if "CUDA" not in str(getattr(ev, "device_type", "")):
            continue  # host-side ops; their kernels are listed on their own
        dev_us = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", None) or 0.0
        per_kind[kind_of(ev.key)] += dev_us / steps / 1000
        kernels.append((dev_us / steps / 1000, ev.count / steps, ev.key[:90]))
    kernels.sort(reverse=True)
    host = {
        ev.key: ev.cpu_time_total / steps / 1000
        for ev in prof.key_averages()
        if ev.key
        in (
            "cudaGraphLaunch",
            "cudaStreamSynchronize",
            "cudaMemcpyAsync",
            "cudaEventSynchronize",
            "cudaLaunchKernel",
            "cuLaunchKernel",
            "cudaLaunchKernelExC",
        )
    }
    return {
        "profiled_wall_ms": 1000 * wall,
        "gpu_ms_by_kind": dict(per_kind),
        "gpu_busy_ms": sum(per_kind.values()),
        "top_kernels": kernels[:14],
        "host_api_ms": host,
    }


def phase_times(engine, torch, steps: int) -> dict:
    """Host time per step in each phase of LLMEngine.step (wrapped with timers; no profiler)."""
    spent: dict[str, float] = collections.defaultdict(float)

    def timed(obj, name: str, label: str):
        original = getattr(obj, name)

        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - t

        setattr(obj, name, wrapper)
        return original

    saved = [
        (engine.scheduler, "schedule", timed(engine.scheduler, "schedule", "schedule")),
        (engine.runner, "execute", timed(engine.runner, "execute", "execute")),
        (engine.runner, "execute_ahead", timed(engine.runner, "execute_ahead", "execute_ahead")),
        (engine, "_advance", timed(engine, "_advance", "advance")),
        (engine, "_emit", timed(engine, "_emit", "emit")),
    ]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / steps
    for obj, name, _ in saved:
        delattr(obj, name)  # the class's methods again
    out = {label: 1000 * s / steps for label, s in spent.items()}
    out["wall_ms"] = 1000 * wall
    return out


def prefill_profiles(engine, torch, cases: str, json_path: str | None) -> None:
    from contracts.sampling import SamplingParams

    results = []
    for case in cases.split(","):
        b, p = (int(x) for x in case.split("x")[:2])
        rng = random.Random(b * p)
        for warm in (True, False):  # first round compiles kernels for this shape
            for i in range(b):
                prompt = [rng.randrange(engine.runner.vocab_size) for _ in range(p)]
                engine.add_request(f"pf{p}-{warm}-{i}", prompt, SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
            if warm:
                while engine.has_unfinished():
                    engine.step()
        steps = 0
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            while engine.has_unfinished():
                engine.step()
                steps += 1
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        per_kind: dict[str, float] = collections.defaultdict(float)
        kernels = []
        for ev in prof.key_averages():
            dev_us = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
            if not dev_us:
                continue
            per_kind[kind_of(ev.key)] += dev_us / b / 1000
            kernels.append((dev_us / b / 1000, ev.count / b, ev.key[:90]))
        kernels.sort(reverse=True)
        row = {
            "case": case,
            "steps": steps,
            "wall_ms_per_prompt": 1000 * wall / b,
            "gpu_ms_per_prompt_by_kind": dict(per_kind),
            "top_kernels": kernels[:16],
        }
        results.append(row)
        print(f"== prefill {case}: {steps} steps, wall {row['wall_ms_per_prompt']:.1f} ms per prompt (profiled)")
        print("   GPU ms per prompt by kind:", {k: round(v, 2) for k, v in per_kind.items()})
        for ms, count, name in kernels[:16]:
            print(f"   {ms:8.3f} ms {count:6.1f}x  {name}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-3.1-8b")
    parser.add_argument("--cases", default="1x512x24,256x1000x12")
    parser.add_argument("--json", default=None)
    parser.add_argument("--prefill", action="store_true", help="profile prompt (prefill) steps: cases are BxP")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    from bench.model_presets import write_preset
    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine

    model = str(write_preset(args.preset, tempfile.mkdtemp(prefix="preset-")))
    engine = LLMEngine(EngineConfig(model=model, enable_prefix_caching=False, load_format="dummy", max_num_batched_tokens=8192))
    results = []
    if args.prefill:
        prefill_profiles(engine, torch, args.cases, args.json)
        return
    for case in args.cases.split(","):
        b, p, o = (int(x) for x in case.split("x"))
        prefill(engine, b, p, o)
        row = {"case": case, **kernel_profile(engine, torch, o), "phases_ms": phase_times(engine, torch, o)}
        for rid in list(engine.requests):
            engine.abort(rid)
        results.append(row)
        print(f"== {case}: wall {row['phases_ms']['wall_ms']:.2f} ms/step, GPU busy {row['gpu_busy_ms']:.2f} ms/step")
        print("   GPU ms by kind:", {k: round(v, 3) for k, v in row["gpu_ms_by_kind"].items()})
        print("   host phases ms:", {k: round(v, 3) for k, v in row["phases_ms"].items()})
        print("   host API ms:", {k: round(v, 3) for k, v in row["host_api_ms"].items()})
        for ms, count, name in row["top_kernels"]:
            print(f"   {ms:8.3f} ms {count:6.1f}x  {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
