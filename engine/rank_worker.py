"""The loop of a non-zero tensor/expert-parallel rank: receive step plans from rank 0, run the model.

Each rank owns one device and its shard of the weights and KV pool. It never
schedules or samples: it mirrors rank 0's forward passes (same StepMetadata, so
the collectives line up) and takes part in KV export/import. It exits when rank
0 says stop or when rank 0's process is gone.
"""

from __future__ import annotations

import multiprocessing
import sys
from multiprocessing.connection import Connection

import torch

from contracts.rank_plan import ExportBlocks, ImportBlocks, StepPlan, Stop, decode_plan
from engine import distributed
from engine.config import EngineConfig
from engine.step_codec import step_metadata

POLL_S = 0.5


def run_rank(config: EngineConfig, rank: int, world_size: int, dist_port: int, inbox: Connection, eos: set[int]) -> None:
    from engine.model_runner import ModelRunner, resolve_device

    device = resolve_device(config.device)
    distributed.init(rank, world_size, dist_port, device, config.expert_parallel, config.distributed_timeout_s, config.dist_host)
    runner = ModelRunner(config, eos)
    parent = multiprocessing.parent_process()
    try:
        while True:
            if not inbox.poll(POLL_S):
                if parent is not None and not parent.is_alive():
                    return
                continue
            try:
                plan = decode_plan(inbox.recv_bytes())
            except EOFError:  # rank 0 closed the pipe
                return
            match plan:
                case StepPlan():
                    runner.forward(step_metadata(plan, runner.device))
                case ExportBlocks(block_ids):
                    distributed.gather_list(runner.kv.gather(block_ids))
                case ImportBlocks(block_ids):
                    _import_shard(runner, block_ids)
                case Stop():
                    return
    finally:
        inbox.close()
        distributed.shutdown()


def _import_shard(runner, block_ids: list[int]) -> None:
    """Receive full-head rows from rank 0 and keep this rank's KV heads."""
    full = full_heads_of(runner)
    s = runner.kv_spec
    rows = torch.empty((len(block_ids), s.num_layers, 2, s.block_size, full, s.head_dim), dtype=s.dtype, device=runner.device)
    distributed.broadcast(rows)
    runner.kv.scatter(block_ids, head_shard(rows, runner))


def full_heads_of(runner) -> int:
    cfg = runner.hf_config
    return getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads


def head_shard(rows: torch.Tensor, runner) -> torch.Tensor:
    """This rank's KV heads of full-head rows [n, L, 2, B, Hkv, D] (replicated heads when TP > Hkv)."""
    local = runner.kv_spec.num_kv_heads
    replicas = runner.model.attention_layers()[0].qkv_proj.kv_replicas
    group = distributed.tp_rank() // replicas
    return rows.narrow(4, group * local, local)


if __name__ == "__main__":
    sys.exit("rank_worker is started by engine.executor, not run directly")
