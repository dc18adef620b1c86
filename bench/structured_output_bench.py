"""What structured output costs: decode tokens/s of the same batch with and without a JSON
schema, in one process and on the same engine (same weights, same seeds, same sampler path).

    python -m bench.structured_output_bench [--model DIR [--load-format dummy]] [--batch 8]
        [--tokens 128] [--repeats 3] [--json out.json]

Without --model a random "small" Llama is written to a temporary directory. Both runs sample
(temperature 1, seeded), so they take the full sampler path; the only difference is the
grammar: compile (reported apart, once per schema, cached after), the per-step bitmask fill
on the host and the mask in the sampler, and advancing each matcher by its token. The JSON
schema cannot be completed within max_tokens (a long array of bounded strings), so both runs
decode the same number of tokens at the same batch size.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 24},
        # at least 64 items of 2+ tokens each: no answer can complete before max_tokens (default 128)
        "notes": {"type": "array", "items": {"type": "string", "maxLength": 16}, "minItems": 64},
    },
    "required": ["title", "notes"],
    "additionalProperties": False,
}


def decode_rate(engine, prompts: list[list[int]], params: list) -> tuple[float, int, float, float]:
    """(decode tokens/s, tokens decoded, seconds, CPU seconds of this process) for one batch;
    prefill and first tokens excluded. CPU seconds stay meaningful on a shared, loaded machine."""
    for i, (prompt, sp) in enumerate(zip(prompts, params)):
        engine.add_request(f"r{time.monotonic_ns()}-{i}", prompt, sp)
    first_seen: set[str] = set()
    decoded, start, cpu_start = 0, None, 0.0
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id not in first_seen:
                first_seen.add(out.request_id)  # the prefill's token: not a decode step's
                continue
            decoded += len(out.new_token_ids)
        if start is None and len(first_seen) == len(prompts):
            start = time.perf_counter()  # every request is past its prefill: decode steps only from here
            cpu_start = time.process_time()
    seconds = time.perf_counter() - (start or time.perf_counter())
    cpu_seconds = time.process_time() - cpu_start if start is not None else 0.0
    return decoded / seconds if seconds > 0 else 0.0, decoded, seconds, cpu_seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: a random small Llama)")
    parser.add_argument("--load-format", default="safetensors", help="'dummy': random weights for a config-only directory")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens per request")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant, interleaved; the best is kept")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from contracts.sampling import SamplingParams
    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.make_model import make_model

    model = args.model or str(make_model("llama", tempfile.mkdtemp(prefix="so-bench-"), size="small"))
    engine = LLMEngine(EngineConfig(model=model, load_format=args.load_format, kv_cache_bytes=256 << 20))
    vocab = engine.runner.vocab_size
    rng = random.Random(0)
    prompts = [[rng.randrange(vocab) for _ in range(args.prompt_len)] for _ in range(args.batch)]
    spec = json.dumps(SCHEMA)

    def params(guided: bool) -> list:
        extra = dict(guided_kind="json_schema", guided_spec=spec) if guided else dict(ignore_eos=True)
        return [SamplingParams(temperature=1.0, seed=i, max_tokens=args.tokens, **extra) for i in range(args.batch)]

    start = time.perf_counter()
    engine.grammar_state(params(True)[0])
    compile_s = time.perf_counter() - start
    decode_rate(engine, prompts[:1], [SamplingParams(max_tokens=4)])  # warm-up
    best: dict[str, tuple[float, int, float, float]] = {}
    for _ in range(args.repeats):  # interleaved, so that a load change on the machine hits both
        for name, guided in (("plain", False), ("json_schema", True)):
            result = decode_rate(engine, prompts, params(guided))
            if name not in best or result[0] > best[name][0]:
                best[name] = result
    plain, guided_rate = best["plain"][0], best["json_schema"][0]
    report = {
        "model": model, "vocab_size": vocab, "device": str(engine.runner.device), "threads": torch.get_num_threads(),
        "batch": args.batch, "max_tokens": args.tokens, "schema_compile_s": compile_s,
        **{name: {"decode_tok_s": best[name][0], "tokens": best[name][1], "seconds": best[name][2],
                  "cpu_seconds": best[name][3]} for name in best},
        "slowdown": 1 - guided_rate / plain if plain else None,
        # tokens per CPU-second of the process: robust to other load on a shared machine
        "slowdown_cpu": 1 - (best["plain"][3] / best["json_schema"][3]) if best["json_schema"][3] else None,
    }  # fmt: skip
    print(f"model {model} (vocab {vocab}, {report['device']}), batch {args.batch}, max_tokens {args.tokens}")
    print(f"schema compile: {compile_s * 1000:.1f} ms (once per schema)")
    print(f"{'variant':<12} {'decode tok/s':>12} {'tok/CPU-s':>10} {'tokens':>7} {'seconds':>8}")
    for name in ("plain", "json_schema"):
        rate, tokens, seconds, cpu = best[name]
        print(f"{name:<12} {rate:>12.1f} {tokens / cpu if cpu else 0:>10.1f} {tokens:>7} {seconds:>8.2f}")
    if plain and report["slowdown_cpu"] is not None:
        print(f"json_schema is {report['slowdown'] * 100:.1f}% slower (wall), {report['slowdown_cpu'] * 100:.1f}% (CPU time)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
