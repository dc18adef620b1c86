"""Command-line flags shared by `splitserve prefill` and `splitserve decode` (docs/interfaces.md)."""

from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass

from contracts.sizes import parse_size


@dataclass(slots=True)
class WorkerOptions:
    role: str  # "prefill" | "decode"
    model: str
    kvstore: str
    host: str = "0.0.0.0"
    port: int = 50071
    advertise_host: str = ""
    metrics_port: int = 9102
    kv_events_port: int = 5557  # PUB; snapshots on kv_events_port + 1
    worker_id: str = ""
    tensor_parallel_size: int = 1
    expert_parallel: bool = False
    distributed_executor: str = "mp"
    nnodes: int = 1  # hosts the tensor-parallel ranks span (engine/remote_ranks.py)
    dist_host: str = "127.0.0.1"  # rendezvous address: this worker's own (leader) address when nnodes > 1
    dist_port: int = 0
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 0  # tokens per engine step; 0: the role's default (step_tokens)
    kv_cache_bytes: int | None = None
    gpu_memory_utilization: float = 0.9
    load_format: str = "safetensors"
    drain_timeout: float = 30.0
    block_size: int = 16
    kv_wait_timeout: float = 10.0  # decode: longest wait for KV blocks a prefill worker is still writing
    kv_copy_at: str = "arrival"  # decode: a direct import's copy when it arrives (its own stream), or "admission"
    kv_transport: str = "direct"  # prefill: "direct" also offers a pull out of its own pool (same host); "store"
    kv_lease_timeout: float = 30.0  # prefill: longest hold of a request's blocks for a direct reader
    store_write_budget: int | None = 0  # prefill with direct: store writes in flight beyond this are skipped

    def __post_init__(self) -> None:
        if not self.max_num_batched_tokens:
            self.max_num_batched_tokens = step_tokens(self.role)
        if self.tensor_parallel_size < 1:
            raise ValueError(f"--tensor-parallel-size must be >= 1, got {self.tensor_parallel_size}")
        if self.kv_copy_at not in ("arrival", "admission"):
            raise ValueError(f"--kv-copy-at must be arrival or admission, got {self.kv_copy_at!r}")
        if self.kv_transport not in ("direct", "p2p", "store"):
            raise ValueError(f"--kv-transport must be direct, p2p or store, got {self.kv_transport!r}")
        if self.role == "prefill" and not self.kvstore and self.kv_transport == "store":
            raise ValueError("a prefill worker needs --kvstore HOST:PORT unless it offers --kv-transport direct or p2p")
        self.advertise_host = self.advertise_host or (socket.gethostname() if self.host in ("0.0.0.0", "::") else self.host)
        self.worker_id = self.worker_id or f"{self.role}-{self.advertise_host}-{self.port}"


DEFAULT_PORTS = {"prefill": (50071, 9102, 5557), "decode": (50081, 9103, 5558)}


def add_worker_flags(p: argparse.ArgumentParser, role: str) -> None:
    port, metrics, events = DEFAULT_PORTS[role]
    p.add_argument("--model", required=True, help="HF checkpoint directory, a .gguf file, or smollm2")
    p.add_argument(
        "--kvstore",
        default="",
        help="kvstore master HOST:PORT (the store tier; a prefill worker without one offers only the direct path)",
    )
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=port)
    p.add_argument("--advertise-host", default="", help="host name others use to reach this worker")
    p.add_argument("--metrics-port", type=int, default=metrics, help="Prometheus /metrics port (0 = off)")
    p.add_argument("--kv-events-port", type=int, default=events, help="ZMQ PUB port of KV events (snapshots on +1)")
    p.add_argument("--worker-id", default="", help="topic of the KV events and id in GetLoad")
    add_parallel_flags(p)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument(
        "--max-num-batched-tokens",
        type=_positive,
        default=None,
        help=f"tokens per engine step (default {PREFILL_STEP_TOKENS} on a prefill worker, {DECODE_STEP_TOKENS} otherwise)",
    )
    p.add_argument("--kv-cache-bytes", type=parse_size, default=None, help="KV pool budget, e.g. 512MiB")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument(
        "--nnodes", type=int, default=1, help="hosts the tensor-parallel ranks span; the others run `splitserve tp-ranks`"
    )
    p.add_argument("--dist-addr", default="127.0.0.1", help="rendezvous address the other hosts' ranks dial (this host)")
    p.add_argument("--dist-port", type=int, default=0, help="rendezvous port (plan channel on +1); fixed when --nnodes > 1")
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        help="GPU: fraction of the card this worker may use (lower it when workers share a GPU)",
    )
    p.add_argument(
        "--load-format",
        choices=["safetensors", "dummy"],
        default="safetensors",
        help="dummy = random weights of the config's shapes (benchmarks without a checkpoint)",
    )
    p.add_argument("--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for in-flight requests")
    if role == "prefill":
        p.add_argument(
            "--kv-transport",
            choices=["direct", "p2p", "store"],
            default="direct",
            help="direct: a decode worker on this host pulls the KV straight out of this worker's pool "
            "(CUDA IPC / shared memory) and the store is written in the background as a cache; "
            "p2p: this worker sends the KV to a decode worker on any host over a process group of the "
            "two (NCCL between GPUs, gloo on CPU); store: KV reaches decode through the store only",
        )
        p.add_argument(
            "--kv-lease-timeout",
            type=float,
            default=30.0,
            help="seconds a request's blocks stay held for a direct reader that never says it is done",
        )
        p.add_argument(
            "--store-write-budget",
            type=parse_size,
            default=0,
            help="with --kv-transport direct: also write the blocks to the store (the cache tier for "
            "prefix reuse by other workers), skipping writes beyond this many bytes in flight; "
            "0 = none (the default: the writes run in the engine's process and cost TTFT, "
            "see docs/performance.md)",
        )
    if role == "decode":
        p.add_argument(
            "--kv-wait-timeout",
            type=float,
            default=10.0,
            help="seconds to wait for KV blocks the prefill worker is still writing (then NOT_FOUND)",
        )
        p.add_argument(
            "--kv-copy-at",
            choices=["arrival", "admission"],
            default="arrival",
            help="when a direct import's KV is copied into this worker's pool: arrival (at once, on a GPU "
            "stream of its own beside the step in flight) or admission (in the step that admits the request)",
        )


# Tokens per engine step. A decode or colocated worker chunks long prompts so that one prefill
# chunk never stalls the decodes sharing its steps (ITL); a prefill worker has no decodes to
# protect, and fewer, larger steps prefill faster (measured on one H200 with Llama-3.1-8B shapes:
# docs/performance.md, issue 11, session 8).
DECODE_STEP_TOKENS = 2048
PREFILL_STEP_TOKENS = 8192


def step_tokens(role: str) -> int:
    return PREFILL_STEP_TOKENS if role == "prefill" else DECODE_STEP_TOKENS


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of tokens, got {value}")
    return value


def add_parallel_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared with `splitserve generate`."""
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="rank processes, one GPU each")
    p.add_argument("--expert-parallel", action="store_true", help="MoE: split whole experts over the ranks")
    p.add_argument(
        "--distributed-executor",
        choices=["mp", "ray"],
        default="mp",
        help="start ranks as processes (mp) or Ray actors (ray; needs ray installed)",
    )


def options_from_args(args: argparse.Namespace, role: str) -> WorkerOptions:
    return WorkerOptions(
        role=role,
        model=args.model,
        kvstore=args.kvstore,
        host=args.host,
        port=args.port,
        advertise_host=args.advertise_host,
        metrics_port=args.metrics_port,
        kv_events_port=args.kv_events_port,
        worker_id=args.worker_id,
        tensor_parallel_size=args.tensor_parallel_size,
        expert_parallel=args.expert_parallel,
        distributed_executor=args.distributed_executor,
        max_num_seqs=args.max_num_seqs,
        nnodes=args.nnodes,
        dist_host=args.dist_addr,
        dist_port=args.dist_port,
        max_num_batched_tokens=args.max_num_batched_tokens or 0,
        kv_cache_bytes=args.kv_cache_bytes,
        drain_timeout=args.drain_timeout,
        block_size=args.block_size,
        kv_wait_timeout=getattr(args, "kv_wait_timeout", 10.0),
        kv_copy_at=getattr(args, "kv_copy_at", "arrival"),
        kv_transport=getattr(args, "kv_transport", "direct"),
        kv_lease_timeout=getattr(args, "kv_lease_timeout", 30.0),
        store_write_budget=getattr(args, "store_write_budget", 0),
        gpu_memory_utilization=args.gpu_memory_utilization,
        load_format=args.load_format,
    )
