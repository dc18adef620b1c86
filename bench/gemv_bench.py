"""Skinny GEMMs of a decode step: cuBLAS (``F.linear``) against engine/triton_gemv.py, same run.

Each implementation runs one whole step's weight GEMMs of a model (every layer's QKV, O,
gate/up and down with its own weights, then the LM head) captured in one CUDA graph, so
the figure includes the gaps between kernels, as in a real decode step. Reported: time per
step and the weight bytes read per second as a fraction of the device copy bandwidth
measured in the same run (bench/engine_bench.py's definition). ``--sweep`` also times the
Triton tile shapes on the step. Usage (GPU):

    python3 -m bench.gemv_bench --preset llama-3.1-8b --batches 1,2,4,8 [--sweep] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F

from bench.engine_bench import copy_bandwidth_gbps
from bench.model_presets import PRESETS
from engine import triton_gemv

SWEEP = {
    "fma": [(n, k, w, s) for n in (8, 16, 32) for k in (512, 1024) for w in (4, 8) for s in (2, 3, 4)],
    "dot": [
        (n, k, w, s)
        for n, k in ((32, 256), (64, 128), (64, 256), (64, 512), (128, 128), (128, 256))
        for w in (4, 8)
        for s in (3, 4)
    ],
}


def step_shapes(cfg: dict) -> list[tuple[int, int]]:
    """(N, K) of one decode step's weight GEMMs, in order."""
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim", h // heads)
    layer = [((heads + 2 * kv) * d, h), (h, heads * d), (2 * inter, h), (h, inter)]
    return layer * layers + [(cfg["vocab_size"], h)]


def time_graph(fn, reps: int = 20) -> float:
    """Milliseconds per call of ``fn`` replayed from a CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()  # compile / pick algorithms outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def sweep_per_shape(shapes: list[tuple[int, int]], weights: list[torch.Tensor], path: str) -> None:
    """Best tiles per (kernel, N, K), each timed over every weight of that shape in the step."""
    best: dict[str, dict[str, list[int]]] = {"fma": {}, "dot": {}}
    dev, dt = weights[0].device, weights[0].dtype
    for n, k in sorted(set(shapes)):
        ws = [w for w in weights if tuple(w.shape) == (n, k)]
        for kernel, m in (("fma", 1), ("dot", 8)):
            x, out = torch.randn(m, k, dtype=dt, device=dev), torch.empty(m, n, dtype=dt, device=dev)

            def run(config, x=x, out=out, ws=ws, kernel=kernel):
                for w in ws:
                    triton_gemv.skinny_linear(x, w, kernel=kernel, config=config, out=out)

            def cublas(x=x, out=out, ws=ws):
                for w in ws:
                    torch.matmul(x, w.t(), out=out)

            base = time_graph(cublas)
            timings = []
            for config in SWEEP[kernel]:
                if not triton_gemv.covers(x, ws[0], config):
                    continue
                try:
                    timings.append((time_graph(lambda c=config: run(c)), config))
                except Exception:  # a tile shape the compiler rejects
                    continue
            ms, config = min(timings)
            best[kernel][f"{n}x{k}"] = list(config)
            print(f"{n}x{k} x{len(ws)} {kernel} M={m}: cuBLAS {base:.3f} ms, best {ms:.3f} ms {config}")
    with open(path, "w") as f:
        json.dump(best, f, indent=1)
    os.environ["SPLITSERVE_GEMV_CONFIGS"] = path
    triton_gemv._shape_configs.cache_clear()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llama-3.1-8b", choices=sorted(PRESETS))
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--out")
    ap.add_argument(
        "--per-shape",
        metavar="FILE",
        help="sweep the tiles of each GEMM shape on its own (fma at M=1, dot at M=8), write the best to FILE "
        "(the format of SPLITSERVE_GEMV_CONFIGS), then time the step with them",
    )
    args = ap.parse_args(argv)
    cfg = PRESETS[args.preset][1]
    shapes = step_shapes(cfg)
    dev, dt = torch.device("cuda"), torch.bfloat16
    weights = [torch.randn(n, k, dtype=dt, device=dev) * 0.02 for n, k in shapes]
    weight_bytes = sum(w.numel() * w.element_size() for w in weights)
    copy_gbps = copy_bandwidth_gbps(torch)
    if copy_gbps is None:
        raise SystemExit("gemv_bench needs a CUDA device")
    print(f"{args.preset}: {len(shapes)} GEMMs per step, {weight_bytes / 1e9:.2f} GB of weights; copy {copy_gbps:.0f} GB/s")
    if args.per_shape:
        sweep_per_shape(shapes, weights, args.per_shape)
    rows = []
    for m in [int(b) for b in args.batches.split(",")]:
        xs = {k: torch.randn(m, k, dtype=dt, device=dev) for k in {k for _, k in shapes}}
        outs = [torch.empty(m, n, dtype=dt, device=dev) for n, _ in shapes]

        def cublas(xs=xs, outs=outs):
            for w, o in zip(weights, outs):
                torch.matmul(xs[w.shape[1]], w.t(), out=o)

        def triton_step(kernel: str, config, xs=xs, outs=outs):
            def run():  # config None: each shape's own tiles (triton_gemv.config_for)
                for w, o in zip(weights, outs):
                    triton_gemv.skinny_linear(xs[w.shape[1]], w, kernel=kernel, config=config, out=o)

            return run

        kernels = ["fma", "dot"] if m == 1 else ["dot"]
        # correctness on the LM head and the down projection first
        for i in (0, 3, len(shapes) - 1):
            ref = F.linear(xs[shapes[i][1]], weights[i]).float()
            for kernel in kernels:
                got = triton_gemv.skinny_linear(xs[shapes[i][1]], weights[i], kernel=kernel).float()
                err = ((got - ref).abs().max() / ref.abs().max()).item()
                assert err < 2e-2, f"{kernel} M={m} shape {shapes[i]}: relative error {err}"
        base = time_graph(cublas)
        row: dict[str, object] = {"batch": m, "cublas_ms": base, "cublas_bw": weight_bytes / base / 1e6 / copy_gbps}
        for kernel in kernels:
            configs = SWEEP[kernel] if args.sweep else [None]
            best = None
            for config in configs:
                try:
                    ms = time_graph(triton_step(kernel, config))
                except Exception as e:  # a tile shape the compiler rejects (registers, shared memory)
                    print(f"  M={m} {kernel} {config}: {type(e).__name__}")
                    continue
                if args.sweep:
                    print(f"  M={m} {kernel} {config}: {ms:.3f} ms")
                if best is None or ms < best[0]:
                    best = (ms, config)
            if best is not None:
                row[f"{kernel}_ms"], row[f"{kernel}_config"] = best
                row[f"{kernel}_bw"] = weight_bytes / best[0] / 1e6 / copy_gbps
        rows.append(row)
        parts = [f"cuBLAS {base:.3f} ms ({row['cublas_bw']:.3f} of copy)"]
        parts += [f"{k} {row[k + '_ms']:.3f} ms ({row[k + '_bw']:.3f}) {row[k + '_config']}" for k in kernels if k + "_ms" in row]
        print(f"M={m}: " + "; ".join(parts))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"preset": args.preset, "copy_gbps": copy_gbps, "weight_bytes": weight_bytes, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
