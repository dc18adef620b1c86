"""`splitserve generate`, `make-model` and `tp-ranks` (heavy imports happen inside the commands)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser("generate", help="generate text from a prompt with the engine (offline)")
    gen.add_argument("--model", required=True, help="HF checkpoint directory")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-tokens", type=int, default=32)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--json", action="store_true", help="print a JSON object instead of the text")
    from engine.server.worker_options import add_parallel_flags

    add_parallel_flags(gen)
    gen.set_defaults(func=_generate)

    make = subparsers.add_parser("make-model", help="write a random-weight HF checkpoint (for tests and demos)")
    make.add_argument("--arch", required=True, choices=["llama", "mistral", "qwen2", "qwen3", "qwen3-moe"])
    make.add_argument("--size", choices=["tiny", "small"], default="tiny")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("dir")
    make.set_defaults(func=_make_model)

    ranks = subparsers.add_parser(
        "tp-ranks", help="the tensor-parallel ranks of one non-leader host of a multi-node worker (engine/remote_ranks.py)"
    )
    ranks.add_argument("--dist-addr", required=True, help="the leader worker's address (its --dist-addr)")
    ranks.add_argument("--dist-port", type=int, required=True, help="the leader's --dist-port")
    ranks.add_argument("--tensor-parallel-size", type=int, required=True, help="ranks in the whole group")
    ranks.add_argument("--nnodes", type=int, required=True, help="hosts in the group, the leader included")
    ranks.add_argument("--node-rank", type=int, required=True, help="this host's index, 1..nnodes-1 (0 = the leader)")
    ranks.set_defaults(func=_tp_ranks)


def _generate(args: argparse.Namespace) -> int:
    from contracts.sampling import SamplingParams
    from engine.llm import LLM

    llm = LLM(
        args.model,
        tensor_parallel_size=args.tensor_parallel_size,
        expert_parallel=args.expert_parallel,
        distributed_executor=args.distributed_executor,
    )
    params = SamplingParams(temperature=args.temperature, seed=args.seed, max_tokens=args.max_tokens)
    try:
        out = llm.generate([args.prompt], params)[0]
    finally:
        llm.engine.shutdown()
    if args.json:
        print(
            json.dumps(
                {
                    "prompt_token_ids": out.prompt_token_ids,
                    "output_token_ids": out.output_token_ids,
                    "text": out.text,
                    "finish_reason": out.finish_reason,
                }
            )
        )
    else:
        print(out.text)
    return 0


def _make_model(args: argparse.Namespace) -> int:
    import torch

    from engine.make_model import checkpoint_summary, make_model

    dtype = torch.float32 if args.size == "tiny" else torch.bfloat16
    path = make_model(args.arch, args.dir, size=args.size, seed=args.seed, dtype=dtype)
    info = checkpoint_summary(path)
    print(f"wrote {args.arch} ({args.size}) to {path}: {info['weights_bytes']} bytes of RANDOM weights (not a trained model)")
    return 0


def _tp_ranks(args: argparse.Namespace) -> int:
    from engine.remote_ranks import RankGroupError, run_node

    try:
        return run_node(args.dist_addr, args.dist_port, args.tensor_parallel_size, args.nnodes, args.node_rank)
    except RankGroupError as exc:
        raise SystemExit(f"splitserve tp-ranks: {exc}") from exc
