"""Paged-attention kernel benchmark: Triton kernel vs torch SDPA on contiguous tensors.

Llama-3.1-8B attention shapes (32 query heads, 8 KV heads, head_dim 128, bf16,
cache blocks of 16 tokens, shuffled block ids). Decode reports GB/s (KV bytes read
plus q and o; eager and replayed from a CUDA graph), prefill reports TFLOP/s (causal FLOPs actually needed). Every case is
checked against ``paged_attention_reference`` before it is timed.

    python bench/attention_bench.py --out attn.json          # on a CUDA GPU
    python bench/attention_bench.py --tiny --out tiny.json   # CPU smoke run (interpreter)
    python bench/attention_bench.py --sweep --out sweep.json  # launch shapes (tiles) per case, checked and timed
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16


@dataclass(slots=True)
class Result:
    kind: str  # "decode" | "prefill"
    batch: int
    q_len: int
    kv_len: int
    triton_ms: float
    triton_graph_ms: float | None  # decode only: the launch replayed from a CUDA graph
    sdpa_ms: float | None
    sdpa_backend: str
    triton_rate: float  # GB/s (decode) or TFLOP/s (prefill), eager launch
    triton_graph_rate: float | None
    sdpa_rate: float | None
    max_abs_err: float


def bench_ms(fn) -> float:
    if torch.cuda.is_available():
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def bench_graph_ms(fn) -> float | None:
    """Median time of fn captured in a CUDA graph (no launch overhead); None off CUDA."""
    if not torch.cuda.is_available():
        return None
    import triton.testing

    return float(triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median"))


def make_paged_batch(
    q_lens: list[int], kv_lens: list[int], dtype: torch.dtype, device: torch.device, heads: tuple[int, int, int]
) -> dict:
    """Paged cache with shuffled block ids plus the same K/V as contiguous tensors."""
    num_heads, num_kv_heads, head_dim = heads
    blocks_per_seq = [-(-n // BLOCK_SIZE) for n in kv_lens]
    num_blocks = sum(blocks_per_seq)
    perm = torch.randperm(num_blocks, device=device).to(torch.int32)
    block_tables = torch.zeros(len(kv_lens), max(blocks_per_seq), dtype=torch.int32, device=device)  # [S, max_blocks]
    used = 0
    for i, n in enumerate(blocks_per_seq):
        block_tables[i, :n] = perm[used : used + n]
        used += n
    k_cache = torch.randn(num_blocks, BLOCK_SIZE, num_kv_heads, head_dim, dtype=dtype, device=device)  # [N, B, Hkv, D]
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(sum(q_lens), num_heads, head_dim, dtype=dtype, device=device)  # [T, Hq, D]
    cu = torch.zeros(len(q_lens) + 1, dtype=torch.int32, device=device)
    cu[1:] = torch.cumsum(torch.tensor(q_lens, device=device), 0)
    return {
        "q": q,
        "k_cache": k_cache,
        "v_cache": v_cache,
        "cu_seqlens_q": cu,
        "seq_lens": torch.tensor(kv_lens, dtype=torch.int32, device=device),
        "block_tables": block_tables,
        "scale": head_dim**-0.5,
    }


def contiguous_kv(batch: dict, seq: int, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[Hkv, kv_len, D] copies of one sequence's K and V."""
    blocks = batch["block_tables"][seq, : -(-kv_len // BLOCK_SIZE)].long()
    k = batch["k_cache"][blocks].flatten(0, 1)[:kv_len].transpose(0, 1).contiguous()
    v = batch["v_cache"][blocks].flatten(0, 1)[:kv_len].transpose(0, 1).contiguous()
    return k, v


def time_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_len: int, kv_len: int, scale: float
) -> tuple[float | None, str]:
    """q [B, Hq, q_len, D], k/v [B, Hkv, kv_len, D]; flash backend first, then any."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    kwargs: dict[str, Any]
    if q_len == 1:
        kwargs = {}
    elif q_len == kv_len:
        kwargs = {"is_causal": True}
    else:
        kwargs = {"attn_mask": causal_lower_right(q_len, kv_len)}
    attempts = [
        ("flash", [SDPBackend.FLASH_ATTENTION], True),
        ("efficient", [SDPBackend.EFFICIENT_ATTENTION], True),
        ("flash, K/V expanded", [SDPBackend.FLASH_ATTENTION], False),
        ("efficient, K/V expanded", [SDPBackend.EFFICIENT_ATTENTION], False),
    ]
    for name, backends, gqa in attempts:
        kk, vv = (
            (k, v)
            if gqa
            else (k.repeat_interleave(q.shape[1] // k.shape[1], 1), v.repeat_interleave(q.shape[1] // v.shape[1], 1))
        )
        fn = functools.partial(F.scaled_dot_product_attention, q, kk, vv, scale=scale, enable_gqa=gqa, **kwargs)
        try:
            with sdpa_kernel(backends):
                fn()
                return bench_ms(functools.partial(_with_backend, backends, fn)), name
        except RuntimeError:
            continue
    return None, "unavailable"


def _with_backend(backends, fn):
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backends):
        return fn()


def run_case(
    kind: str, batch_size: int, q_len: int, kv_len: int, dtype: torch.dtype, device: torch.device, heads: tuple[int, int, int]
) -> Result:
    from engine.attention import paged_attention_reference
    from engine.triton_attention import paged_attention_triton

    num_heads, num_kv_heads, head_dim = heads
    batch = make_paged_batch([q_len] * batch_size, [kv_len] * batch_size, dtype, device, heads)
    max_q_len = q_len
    out = paged_attention_triton(**batch, max_q_len=max_q_len)
    expected = paged_attention_reference(**batch)
    err = (out.float() - expected.float()).abs().max().item()
    if err > 5e-2:
        raise AssertionError(f"{kind} B={batch_size} q={q_len} kv={kv_len}: max abs error {err} vs reference")
    triton_ms = bench_ms(lambda: paged_attention_triton(**batch, max_q_len=max_q_len))
    graph_ms = bench_graph_ms(lambda: paged_attention_triton(**batch, max_q_len=max_q_len)) if kind == "decode" else None

    ks, vs = zip(*(contiguous_kv(batch, i, kv_len) for i in range(batch_size)))
    k, v = torch.stack(ks), torch.stack(vs)  # [B, Hkv, kv_len, D]
    q = batch["q"].view(batch_size, q_len, num_heads, head_dim).transpose(1, 2)  # [B, Hq, q_len, D]
    sdpa_ms, backend = time_sdpa(q, k, v, q_len, kv_len, batch["scale"])

    elt = torch.finfo(dtype).bits // 8
    if kind == "decode":
        work = batch_size * (2 * kv_len * num_kv_heads + 2 * num_heads) * head_dim * elt / 1e9  # GB
    else:
        visible = q_len * (kv_len - q_len) + q_len * (q_len + 1) // 2  # causal (query, key) pairs
        work = batch_size * 4 * head_dim * num_heads * visible / 1e12  # TFLOP
    return Result(
        kind,
        batch_size,
        q_len,
        kv_len,
        triton_ms,
        graph_ms,
        sdpa_ms,
        backend,
        work / (triton_ms / 1e3),
        None if graph_ms is None else work / (graph_ms / 1e3),
        None if sdpa_ms is None else work / (sdpa_ms / 1e3),
        err,
    )


# the first of each list is the kernel's default launch shape
DECODE_TILES = [dict(BLOCK_N=64, num_warps=4, num_stages=3)] + [
    dict(BLOCK_N=n, num_warps=w, num_stages=st)
    for n in (32, 64, 128)
    for w in (2, 4, 8)
    for st in (2, 3, 4)
    if (n, w, st) != (64, 4, 3)
]
PREFILL_TILES = [
    dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=st)
    for m, n, w, st in (
        (256, 64, 16, 2),
        (128, 64, 8, 3),
        (128, 128, 8, 2),
        (128, 128, 8, 3),
        (128, 64, 4, 3),
        (64, 64, 4, 3),
        (128, 32, 4, 4),
        (64, 128, 4, 3),
        (128, 64, 8, 4),
        (128, 128, 4, 2),
        (256, 64, 8, 3),
        (256, 128, 8, 2),
        (256, 64, 16, 3),
        (256, 32, 8, 3),
        (128, 64, 4, 4),
        (128, 128, 8, 4),
    )
]


def sweep(device: torch.device, only: str | None = None) -> list[dict]:
    """Time every launch shape of DECODE_TILES / PREFILL_TILES on the engine's hot cases (each checked first)."""
    from engine.attention import paged_attention_reference
    from engine.triton_attention import paged_attention_triton

    heads = (NUM_HEADS, NUM_KV_HEADS, HEAD_DIM)
    cases = [
        ("decode", 1, 1, 512),
        ("decode", 32, 1, 576),
        ("decode", 128, 1, 544),
        ("decode", 256, 1, 1500),
        ("prefill", 1, 4096, 4096),
        ("prefill", 1, 8192, 8192),
        ("prefill", 1, 2048, 8192),
        ("prefill", 16, 512, 512),
        ("prefill", 4, 2048, 2048),
    ]
    cases = [c for c in cases if only in (None, c[0])]
    rows: list[dict[str, Any]] = []
    for kind, b, q_len, kv_len in cases:
        batch = make_paged_batch([q_len] * b, [kv_len] * b, torch.bfloat16, device, heads)
        expected = paged_attention_reference(**batch) if b * q_len <= 4096 else None
        for tiles in DECODE_TILES if kind == "decode" else PREFILL_TILES:
            fn = functools.partial(paged_attention_triton, **batch, max_q_len=q_len, tiles=tiles)
            try:
                out = fn()
            except Exception as exc:  # e.g. out of shared memory: report, go on
                print(f"sweep {kind} B={b} kv={kv_len} {tiles}: {type(exc).__name__}", file=sys.stderr)
                continue
            err = (out.float() - expected.float()).abs().max().item() if expected is not None else 0.0
            ms = bench_graph_ms(fn) if kind == "decode" else bench_ms(fn)
            rows.append({"kind": kind, "batch": b, "q_len": q_len, "kv_len": kv_len, **tiles, "ms": ms, "max_abs_err": err})
        mine = [r for r in rows if (r["kind"], r["batch"], r["q_len"], r["kv_len"]) == (kind, b, q_len, kv_len)]
        best, first = min(mine, key=lambda r: r["ms"]), mine[0]
        shape = {k: v for k, v in best.items() if k[0].isupper() or k.startswith("num_")}
        print(
            f"sweep {kind:7} B={b:3d} q={q_len:5d} kv={kv_len:5d}: default {first['ms']:.4f} ms, best {best['ms']:.4f} ms "
            f"{shape} err {best['max_abs_err']:.3g}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="path of the JSON results")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke run in the Triton interpreter)")
    parser.add_argument("--sweep", action="store_true", help="time launch shapes of the engine's hot cases instead")
    parser.add_argument("--only", choices=["decode", "prefill"], help="--sweep: only these cases")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        if not args.tiny:
            sys.exit("no CUDA device: pass --tiny for a CPU smoke run")
        os.environ["TRITON_INTERPRET"] = "1"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.sweep:
        with open(args.out, "w") as f:
            json.dump(sweep(device, args.only), f, indent=2)
        return

    if args.tiny:
        heads, dtype = (4, 2, 16), torch.float16
        cases = [("decode", 2, 1, 40), ("prefill", 1, 24, 24), ("prefill", 1, 24, 48)]
    else:
        heads, dtype = (NUM_HEADS, NUM_KV_HEADS, HEAD_DIM), torch.bfloat16
        cases = [("decode", b, 1, ctx) for b in (1, 8, 32, 64) for ctx in (1024, 4096, 8192)]
        cases += [("prefill", 1, 4096, 4096), ("prefill", 1, 4096, 8192)]

    torch.manual_seed(0)
    results, failures = [], []
    for case in cases:
        try:
            results.append(run_case(*case, dtype=dtype, device=device, heads=heads))
        except (AssertionError, RuntimeError) as exc:  # report the case, keep measuring the others
            failures.append(f"{case}: {exc}")
            print(f"FAILED {case}: {exc}", file=sys.stderr)

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (interpreter)"
    print(f"paged attention, {device_name}, heads {heads[0]}/{heads[1]}, d={heads[2]}, {dtype}, block {BLOCK_SIZE}")
    print(
        f"{'kind':8} {'B':>3} {'q_len':>6} {'kv_len':>6} {'triton ms':>10} {'graph ms':>9} {'sdpa ms':>9} "
        f"{'triton':>9} {'graph':>9} {'sdpa':>9} unit     sdpa backend"
    )
    for r in results:
        unit = "GB/s" if r.kind == "decode" else "TFLOP/s"
        sdpa_ms = f"{r.sdpa_ms:9.3f}" if r.sdpa_ms is not None else f"{'-':>9}"
        sdpa_rate = f"{r.sdpa_rate:9.1f}" if r.sdpa_rate is not None else f"{'-':>9}"
        graph_rate = f"{r.triton_graph_rate:9.1f}" if r.triton_graph_rate is not None else f"{'-':>9}"
        graph_ms = f"{r.triton_graph_ms:9.3f}" if r.triton_graph_ms is not None else f"{'-':>9}"
        print(
            f"{r.kind:8} {r.batch:3d} {r.q_len:6d} {r.kv_len:6d} {r.triton_ms:10.3f} {graph_ms} {sdpa_ms} "
            f"{r.triton_rate:9.1f} {graph_rate} {sdpa_rate} {unit:8} {r.sdpa_backend}"
        )
    with open(args.out, "w") as f:
        json.dump(
            {
                "device": device_name,
                "dtype": str(dtype),
                "heads": heads,
                "block_size": BLOCK_SIZE,
                "results": [asdict(r) for r in results],
                "failures": failures,
            },
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
