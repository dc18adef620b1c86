"""Offline engine throughput: prefill and decode tokens/s on a checkpoint (random weights are fine).

    python -m bench.engine_bench --model DIR [--batch 16 --prompt-len 128 --output-len 64] [--json out.json]

Prints a table and writes JSON. Decode GB/s = weight bytes read per step x steps/s
(a lower bound on the memory traffic, KV reads excluded).
"""

from __future__ import annotations

import argparse
import json
import random
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args(argv)

    import torch

    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams

    engine = LLMEngine(EngineConfig(model=args.model, dtype=args.dtype, enable_prefix_caching=False,
                                    max_num_batched_tokens=max(2048, args.batch * args.prompt_len)))
    vocab = engine.runner.vocab_size
    rng = random.Random(0)
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    for i in range(args.batch):
        engine.add_request(f"b{i}", [rng.randrange(vocab) for _ in range(args.prompt_len)], params)
    t0 = time.perf_counter()
    engine.step()  # the whole batch's prefill (+ first token)
    t1 = time.perf_counter()
    steps = 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
    t2 = time.perf_counter()
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.runner.model.parameters())
    result = {
        "device": str(engine.runner.device),
        "dtype": str(engine.runner.dtype).removeprefix("torch."),
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "output_len": args.output_len,
        "prefill_tokens_per_s": args.batch * args.prompt_len / (t1 - t0),
        "decode_tokens_per_s": args.batch * steps / (t2 - t1),
        "decode_step_ms": 1000 * (t2 - t1) / max(steps, 1),
        "decode_weight_GB_per_s": weight_bytes * steps / (t2 - t1) / 1e9,
        "torch": torch.__version__,
    }
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.1f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
