"""Colocated vs disaggregated serving on real worker processes (CPU tiny model, or real shapes on a GPU).

For each request rate: Poisson arrivals of random prompts; colocated = Generate on the
decode worker without a handle; disaggregated = Prefill on a prefill worker, then Generate
with its KV handle, once per KV transport (one prefill worker each: ``--kv-transport direct``
= a pull out of the prefill engine's pool on this host, ``store`` = through the KV store).
Reports TTFT (p50/p90), ITL p99, output tokens/s, and two handoff figures per prompt token:
"handoff" = decode side Generate call -> first streamed token (includes one decode step),
"KV in place" = the import reaching the decode engine -> its KV in the engine's pool
(kv_handoff_seconds: lookup, mapping, waiting for the admitting step, the copy), and
"KV move" = the decode worker's own transfer time (kv_transfer_seconds), i.e. the copy alone. Prints a table, writes JSON.

    python -m bench.pd_bench --rates 2,8 --requests 24 --transports direct,store --out pd_bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from contracts.rpc import worker_pb2 as pb
from contracts.rpc import worker_pb2_grpc as pb_grpc


@dataclass(slots=True)
class Result:
    mode: str
    rate: float
    requests: int
    ttft_p50_ms: float
    ttft_p90_ms: float
    itl_p99_ms: float
    output_tok_s: float
    handoff_us_per_prompt_token: float | None
    kv_move_us_per_prompt_token: float | None = None
    kv_in_place_us_per_prompt_token: float | None = None
    prompt_tokens: int = 0
    failed: int = 0


async def one(
    mode: str, prefill, decode, prompt: list[int], sp: pb.SamplingParams
) -> tuple[float, int, float | None, list[float]]:
    start = time.perf_counter()
    ttft, n, handoff, gaps, last = 0.0, 0, None, [], None
    if mode == "colocated":
        req = pb.GenerateRequest(prompt_token_ids=prompt, sampling=sp)
    else:
        first = await prefill.Prefill(pb.PrefillRequest(prompt_token_ids=prompt, sampling=sp))
        ttft, n = time.perf_counter() - start, 1
        req = pb.GenerateRequest(
            prompt_token_ids=prompt, sampling=sp, kv_handle=first.kv_handle, first_token_id=first.first_token_id
        )
    sent = time.perf_counter()
    async for chunk in decode.Generate(req):
        now = time.perf_counter()
        if n == 0:
            ttft = now - start
        elif handoff is None and mode != "colocated":
            handoff = (now - sent) / len(prompt)
        if last is not None:
            gaps.append(now - last)
        last = now
        n += len(chunk.token_ids)
    return ttft, n, handoff, gaps


async def run_rate(
    mode: str,
    rate: float,
    n: int,
    prefill_addr: str,
    decode_addr: str,
    seed: int,
    prompt_len: tuple[int, int] = (64, 256),
    max_tokens: int = 32,
) -> Result:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(prefill_addr) as pc, grpc.aio.insecure_channel(decode_addr) as dc:
        prefill, decode = pb_grpc.PrefillServiceStub(pc), pb_grpc.DecodeServiceStub(dc)
        tasks, prompt_tokens = [], 0
        start = time.perf_counter()
        for _ in range(n):
            prompt = [rng.randrange(3, 384) for _ in range(rng.randrange(*prompt_len))]
            prompt_tokens += len(prompt)
            sp = pb.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
            tasks.append(asyncio.create_task(one(mode, prefill, decode, prompt, sp)))
            await asyncio.sleep(rng.expovariate(rate))
        settled = await asyncio.gather(*tasks, return_exceptions=True)
        done = [d for d in settled if not isinstance(d, BaseException)]
        failed = [d for d in settled if isinstance(d, BaseException)]
        if failed:
            print(f"{mode} at {rate}/s: {len(failed)} of {n} requests failed, e.g. {str(failed[0])[:300]}", flush=True)
        wall = time.perf_counter() - start
    if not done:
        return Result(mode, rate, n, float("nan"), float("nan"), float("nan"), 0.0, None, None, prompt_tokens, len(failed))
    ttfts = sorted(d[0] for d in done)
    handoffs = [d[2] for d in done if d[2] is not None]
    gaps = sorted(g for d in done for g in d[3]) or [0.0]
    return Result(
        mode,
        rate,
        n,
        1000 * statistics.median(ttfts),
        1000 * ttfts[int(0.9 * (len(ttfts) - 1))],
        1000 * gaps[int(0.99 * (len(gaps) - 1))],
        sum(d[1] for d in done) / wall,
        1e6 * statistics.median(handoffs) if handoffs else None,
        prompt_tokens=prompt_tokens,
        failed=len(failed),
    )


TRANSPORT_FLAGS = {
    "direct": ["--kv-transport", "direct"],
    "direct+cache": ["--kv-transport", "direct", "--store-write-budget", "1GiB"],  # store writes in the background
    "store": ["--kv-transport", "store"],
    "p2p": ["--kv-transport", "p2p"],  # a send over a process group of the two workers (NCCL on GPUs, gloo on CPU)
}


def decode_histogram_sum(metrics_port: int, metric: str) -> float:
    """Sum of one of the decode worker's histograms (all transports) from its /metrics: kv_transfer_seconds
    (the KV's move alone) or kv_handoff_seconds (import reaching the engine -> KV in its pool)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f"splitserve_worker_{metric}_sum{{") and 'role="decode"' in line
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rates", default="2,8", help="requests/s, comma separated")
    p.add_argument("--requests", type=int, default=24, help="requests per rate and mode")
    p.add_argument("--model", default="", help="checkpoint dir (default: a tiny random llama)")
    p.add_argument("--preset", default="", help="real shapes with random weights (bench/model_presets.py), e.g. llama-3.1-8b")
    p.add_argument("--prompt-len", default="64:256", help="MIN:MAX prompt tokens")
    p.add_argument("--max-tokens", type=int, default=32, help="new tokens per request")
    p.add_argument(
        "--transports",
        default="direct,store",
        help=f"KV transports to compare, one prefill worker each: {', '.join(TRANSPORT_FLAGS)}",
    )
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.3,
        help="per worker; the prefill workers and the decode worker share one GPU",
    )
    p.add_argument("--warmup", type=int, default=12, help="untimed requests per mode first (kernels compiled, caches primed)")
    p.add_argument(
        "--mps",
        action="store_true",
        help="run the workers under a private CUDA MPS daemon (splitserve/mps.py): their kernels share the GPU "
        "instead of time-slicing it",
    )
    p.add_argument(
        "--mps-decode-percent",
        type=int,
        default=None,
        help="with --mps: the share of the GPU's SMs the decode worker may use (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE)",
    )
    p.add_argument(
        "--mps-prefill-percent",
        type=int,
        default=None,
        help="with --mps: the share of the SMs each prefill worker may use (so that decode kernels always find SMs free)",
    )
    p.add_argument(
        "--mps-prefill-priority",
        type=int,
        default=None,
        help="with --mps: the prefill workers' MPS client priority (CUDA_MPS_CLIENT_PRIORITY; 1 = below normal: "
        "the decode worker's kernels go first when both wait for SMs)",
    )
    p.add_argument(
        "--prefill-max-num-batched-tokens",
        type=int,
        default=None,
        help="the prefill workers' per-step token budget (default: the worker's own); colocated and decode keep theirs",
    )
    p.add_argument(
        "--decode-kv-copy-at",
        choices=["arrival", "admission"],
        default="arrival",
        help="the decode worker's --kv-copy-at: a direct import's copy at once beside the step in flight, or in "
        "the step that admits it (the way before)",
    )
    p.add_argument("--out", default="pd_bench.json")
    args = p.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.mps:
            from splitserve.mps import mps_daemon

            os.environ.update(stack.enter_context(mps_daemon()))  # the workers inherit it
        return bench(args)


def bench(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "workers"))
    from worker_processes import start_worker, wait_serving

    from engine.make_model import make_model
    from kvstore.embedded import EmbeddedStore

    extra: list[str] = ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    if args.preset:
        from bench.model_presets import write_preset

        model = str(write_preset(args.preset, Path(tempfile.mkdtemp()) / args.preset))
        extra += ["--load-format", "dummy", "--kv-cache-bytes", "8GiB"]
    else:
        model = args.model or str(make_model("llama", Path(tempfile.mkdtemp()) / "tiny", "tiny"))
    lo, hi = (int(x) for x in args.prompt_len.split(":"))
    store = EmbeddedStore(capacity=(32 << 30) if args.preset else (512 << 20))
    store.start()
    transports = args.transports.split(",") if args.transports else []
    if args.mps and args.mps_prefill_percent is not None:
        os.environ["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(args.mps_prefill_percent)  # the prefill workers' share
    if args.mps and args.mps_prefill_priority is not None:
        os.environ["CUDA_MPS_CLIENT_PRIORITY"] = str(args.mps_prefill_priority)
    budget = (
        []
        if args.prefill_max_num_batched_tokens is None
        else ["--max-num-batched-tokens", str(args.prefill_max_num_batched_tokens)]
    )
    prefills = {
        t: start_worker("prefill", model, store.address, f"bench-prefill-{t}", *TRANSPORT_FLAGS[t], *extra, *budget)
        for t in transports
    }
    os.environ.pop("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", None)
    os.environ.pop("CUDA_MPS_CLIENT_PRIORITY", None)
    capped = args.mps and (
        args.mps_decode_percent is not None or args.mps_prefill_percent is not None or args.mps_prefill_priority is not None
    )
    if args.mps and args.mps_decode_percent is not None:
        os.environ["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(args.mps_decode_percent)  # the decode worker's share only
    decode = start_worker("decode", model, store.address, "bench-decode", *extra, "--kv-copy-at", args.decode_kv_copy_at)
    os.environ.pop("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", None)
    # colocated serving gets the whole GPU: with the decode worker capped, a worker of its own
    colocated = start_worker("decode", model, store.address, "bench-colocated", *extra) if capped else decode
    workers = [*prefills.values(), decode] + ([colocated] if capped else [])
    results = []
    try:
        wait_serving(workers)
        for mode in ["colocated", *(f"disagg-{t}" for t in transports)] if args.warmup else []:
            prefill = prefills.get(mode.removeprefix("disagg-"), decode)
            target = colocated if mode == "colocated" else decode
            asyncio.run(run_rate(mode, 8.0, args.warmup, prefill.address, target.address, 1, (lo, hi), 8))
        for rate in [float(r) for r in args.rates.split(",")]:
            for mode in ["colocated", *(f"disagg-{t}" for t in transports)]:
                prefill = prefills.get(mode.removeprefix("disagg-"), decode)
                target = colocated if mode == "colocated" else decode
                moved = decode_histogram_sum(decode.metrics_port, "kv_transfer_seconds")
                handed = decode_histogram_sum(decode.metrics_port, "kv_handoff_seconds")
                r = asyncio.run(
                    run_rate(
                        mode, rate, args.requests, prefill.address, target.address, int(rate * 100), (lo, hi), args.max_tokens
                    )
                )
                if mode != "colocated":
                    time.sleep(0.5)  # the last transfer's figure reaches /metrics just after its stream ends
                    move = decode_histogram_sum(decode.metrics_port, "kv_transfer_seconds") - moved
                    r.kv_move_us_per_prompt_token = 1e6 * move / r.prompt_tokens
                    in_place = decode_histogram_sum(decode.metrics_port, "kv_handoff_seconds") - handed
                    r.kv_in_place_us_per_prompt_token = 1e6 * in_place / r.prompt_tokens
                results.append(r)
    finally:
        for w in workers:
            w.stop()
        store.stop()
    print(
        f"{'mode':<15} {'rate/s':>6} {'reqs':>5} {'TTFT p50 ms':>12} {'TTFT p90 ms':>12} {'ITL p99 ms':>11} "
        f"{'out tok/s':>10} {'handoff us/tok':>15} {'KV in place us/tok':>19} {'KV move us/tok':>15} {'failed':>7}"
    )
    for r in results:
        h = f"{r.handoff_us_per_prompt_token:.2f}" if r.handoff_us_per_prompt_token is not None else "-"
        m = f"{r.kv_move_us_per_prompt_token:.3f}" if r.kv_move_us_per_prompt_token is not None else "-"
        ip = f"{r.kv_in_place_us_per_prompt_token:.3f}" if r.kv_in_place_us_per_prompt_token is not None else "-"
        print(
            f"{r.mode:<15} {r.rate:>6.1f} {r.requests:>5} {r.ttft_p50_ms:>12.1f} {r.ttft_p90_ms:>12.1f} "
            f"{r.itl_p99_ms:>11.1f} {r.output_tok_s:>10.1f} {h:>15} {ip:>19} {m:>15} {r.failed:>7}"
        )
    Path(args.out).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
