"""Colocated vs disaggregated serving on real worker processes (CPU, tiny model).

For each request rate: Poisson arrivals of random prompts; colocated = Generate on a
decode worker without a handle; disaggregated = Prefill on a prefill worker, then
Generate with its KV handle. Reports TTFT (p50/p90), output tokens/s and the KV
handoff time per prompt token (decode side: Generate call -> first streamed token,
minus nothing else; it includes the store read and import). Prints a table, writes JSON.

    python -m bench.pd_bench --rates 2,8 --requests 24 --out pd_bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from splitserve.rpc import worker_pb2 as pb
from splitserve.rpc import worker_pb2_grpc as pb_grpc


@dataclass(slots=True)
class Result:
    mode: str
    rate: float
    requests: int
    ttft_p50_ms: float
    ttft_p90_ms: float
    output_tok_s: float
    handoff_us_per_prompt_token: float | None


async def one(mode: str, prefill, decode, prompt: list[int], sp: pb.SamplingParams) -> tuple[float, int, float | None]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    ttft, n, handoff = 0.0, 0, None
    if mode == "colocated":
        req = pb.GenerateRequest(prompt_token_ids=prompt, sampling=sp)
    else:
        first = await prefill.Prefill(pb.PrefillRequest(prompt_token_ids=prompt, sampling=sp))
        ttft, n = time.perf_counter() - start, 1
        req = pb.GenerateRequest(prompt_token_ids=prompt, sampling=sp, kv_handle=first.kv_handle, first_token_id=first.first_token_id)
    sent = time.perf_counter()
    async for chunk in decode.Generate(req):
        if n == 0:
            ttft = time.perf_counter() - start
        elif handoff is None and mode == "disaggregated":
            handoff = (time.perf_counter() - sent) / len(prompt)
        n += len(chunk.token_ids)
    return ttft, n, handoff


async def run_rate(mode: str, rate: float, n: int, prefill_addr: str, decode_addr: str, seed: int,
                   prompt_len: tuple[int, int] = (64, 256), max_tokens: int = 32) -> Result:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(prefill_addr) as pc, grpc.aio.insecure_channel(decode_addr) as dc:
        prefill, decode = pb_grpc.PrefillServiceStub(pc), pb_grpc.DecodeServiceStub(dc)
        tasks = []
        start = time.perf_counter()
        for _ in range(n):
            prompt = [rng.randrange(3, 384) for _ in range(rng.randrange(*prompt_len))]
            sp = pb.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
            tasks.append(asyncio.create_task(one(mode, prefill, decode, prompt, sp)))
            await asyncio.sleep(rng.expovariate(rate))
        done = await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    ttfts = sorted(d[0] for d in done)
    handoffs = [d[2] for d in done if d[2] is not None]
    return Result(mode, rate, n, 1000 * statistics.median(ttfts), 1000 * ttfts[int(0.9 * (len(ttfts) - 1))],
                  sum(d[1] for d in done) / wall, 1e6 * statistics.median(handoffs) if handoffs else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rates", default="2,8", help="requests/s, comma separated")
    p.add_argument("--requests", type=int, default=24, help="requests per rate and mode")
    p.add_argument("--model", default="", help="checkpoint dir (default: a tiny random llama)")
    p.add_argument("--preset", default="", help="real shapes with random weights (bench/model_presets.py), e.g. llama-3.1-8b")
    p.add_argument("--prompt-len", default="64:256", help="MIN:MAX prompt tokens")
    p.add_argument("--max-tokens", type=int, default=32, help="new tokens per request")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.4,
                   help="per worker; prefill and decode share one GPU")
    p.add_argument("--out", default="pd_bench.json")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "workers"))
    from engine.make_model import make_model
    from kvstore.embedded import EmbeddedStore
    from worker_processes import start_worker, wait_serving

    extra: list[str] = ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    if args.preset:
        from bench.model_presets import write_preset

        model = str(write_preset(args.preset, Path(tempfile.mkdtemp()) / args.preset))
        extra += ["--load-format", "dummy", "--kv-cache-bytes", "8GiB"]
    else:
        model = args.model or str(make_model("llama", Path(tempfile.mkdtemp()) / "tiny", "tiny"))
    lo, hi = (int(x) for x in args.prompt_len.split(":"))
    store = EmbeddedStore(capacity=(8 << 30) if args.preset else (512 << 20))
    store.start()
    prefill = start_worker("prefill", model, store.address, "bench-prefill", *extra)
    decode = start_worker("decode", model, store.address, "bench-decode", *extra)
    results = []
    try:
        wait_serving([prefill, decode])
        for rate in [float(r) for r in args.rates.split(",")]:
            for mode in ("colocated", "disaggregated"):
                results.append(asyncio.run(run_rate(mode, rate, args.requests, prefill.address, decode.address,
                                                    int(rate * 100), (lo, hi), args.max_tokens)))
    finally:
        prefill.stop()
        decode.stop()
        store.stop()
    print(f"{'mode':<14} {'rate/s':>6} {'reqs':>5} {'TTFT p50 ms':>12} {'TTFT p90 ms':>12} {'out tok/s':>10} {'handoff us/prompt tok':>22}")
    for r in results:
        h = f"{r.handoff_us_per_prompt_token:.1f}" if r.handoff_us_per_prompt_token is not None else "-"
        print(f"{r.mode:<14} {r.rate:>6.1f} {r.requests:>5} {r.ttft_p50_ms:>12.1f} {r.ttft_p90_ms:>12.1f} {r.output_tok_s:>10.1f} {h:>22}")
    Path(args.out).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
