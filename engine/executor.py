"""Runs the model on one device (``ModelRunner``) or over tensor/expert-parallel rank processes.

With ``tensor_parallel_size`` N > 1 this process is rank 0: it keeps the
scheduler and sampler (the LLMEngine as at N = 1) and starts ranks 1..N-1, one
process per device (multiprocessing spawn, or Ray actors). Each step rank 0
writes a compact encoding of the step's metadata to a pipe per rank
(engine/step_codec.py), then all ranks run the same forward and meet in the
collectives; only rank 0 samples.

KV transfer is TP-independent: ``export_kv`` returns full-head rows
[n, L, 2, B, Hkv, D] gathered from the ranks' head shards, ``import_kv`` takes
full-head rows and each rank keeps its heads. So a TP=2 prefill pool and a TP=1
decode pool exchange blocks unchanged.

A dead rank fails the engine: rank 0 checks the rank processes before each
step and turns a failed collective into ``RankDied``; every collective also has
a timeout (``distributed_timeout_s``), so nothing waits on a dead peer forever.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Iterator

import torch

from contracts.lifeline import run_tied
from contracts.ports import free_port
from contracts.rank_plan import ExportBlocks, ImportBlocks, RankPlan, Stop, encode
from engine import distributed
from engine.config import EngineConfig
from engine.errors import RankDied
from engine.kv_cache import KVCacheSpec
from engine.model_runner import ModelRunner, resolve_device
from engine.rank_worker import full_heads_of, head_shard, run_rank
from engine.sampler import SamplerOutput
from engine.sequence import Sequence
from engine.step_codec import step_plan

DEATH_GRACE_S = 3.0  # after a failed collective: how long to wait for the peer's exit to become visible


def make_runner(config: EngineConfig, eos: set[int]) -> ModelRunner | ParallelExecutor:
    return ModelRunner(config, eos) if config.tensor_parallel_size == 1 else ParallelExecutor(config, eos)


@contextlib.contextmanager
def _allow_children() -> Iterator[None]:
    """The worker's engine core is a daemonic process, and those may not start children.

    The ranks do not need daemon cleanup: each one exits when its parent is gone
    (engine/rank_worker.py), so lift the flag while starting them.
    """
    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]  # private, see above
    was = config.get("daemon", False)
    config["daemon"] = False
    try:
        yield
    finally:
        config["daemon"] = was


class ParallelExecutor:
    """Rank 0 of N: the ModelRunner's interface, backed by N rank processes."""

    def __init__(self, config: EngineConfig, eos: set[int]) -> None:
        self.world = config.tensor_parallel_size
        port = config.dist_port or free_port()
        mp = multiprocessing.get_context("spawn")
        self.ranks: list = []
        self.plans: list = []
        if config.distributed_executor == "ray":
            from engine.ray_ranks import start_ray_ranks

            self.ranks, self.plans = start_ray_ranks(config, self.world, port, eos)  # plans over loopback sockets
        else:
            if config.nnodes > 1:  # the other nodes' ranks first: local ranks must not wait for pods in the rendezvous
                from engine.remote_ranks import accept_remote_ranks

                self.ranks, self.plans = accept_remote_ranks(config, eos)
            local = self.world // config.nnodes
            pipes = [mp.Pipe(duplex=False) for _ in range(1, local)]  # (reader for rank r, writer for rank 0)
            self.plans = [writer for _, writer in pipes] + self.plans
            self.ranks = [
                mp.Process(
                    target=run_tied,
                    daemon=True,
                    name=f"splitserve-rank{r}",
                    args=(os.getpid(), run_rank, config, r, self.world, port, pipes[r - 1][0], eos),
                )
                for r in range(1, local)
            ] + self.ranks
            with _allow_children():
                for p in self.ranks[: local - 1]:
                    p.start()
        self._closed = False
        try:
            with self._guard():
                distributed.init(
                    0,
                    self.world,
                    port,
                    resolve_device(config.device),
                    config.expert_parallel,
                    config.distributed_timeout_s,
                    config.dist_host,
                )
                self.runner = ModelRunner(config, eos)
        except BaseException:
            self.shutdown()
            raise
        r = self.runner
        self.config, self.hf_config, self.vocab_size = config, r.hf_config, r.vocab_size
        self.device, self.dtype, self.kv, self.kv_spec = r.device, r.dtype, r.kv, r.kv_spec
        self.replicas = r.model.attention_layers()[0].qkv_proj.kv_replicas

    @property
    def transfer_spec(self) -> KVCacheSpec:
        """Shape of the KV rows ``export_kv`` returns: all KV heads."""
        s = self.kv_spec
        return KVCacheSpec(s.num_layers, s.block_size, full_heads_of(self.runner), s.head_dim, s.dtype)

    # ---- liveness ------------------------------------------------------------------------------
    def _dead_rank(self) -> str | None:
        for rank, p in enumerate(self.ranks, start=1):
            if not p.is_alive():
                return (
                    f"tensor-parallel rank {rank} (pid {p.pid}) exited with code {p.exitcode}; "
                    "the engine cannot continue: restart it (that rank's log has the cause)"
                )
        return None

    def check_ranks(self) -> None:
        """Raise RankDied if any rank process has exited."""
        dead = self._dead_rank()
        if dead is not None:
            raise RankDied(dead)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn a failure caused by a dead peer (a broken collective) into RankDied."""
        try:
            yield
        except RankDied:
            raise
        except Exception as exc:
            deadline = time.monotonic() + DEATH_GRACE_S
            while (dead := self._dead_rank()) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if dead is not None:
                raise RankDied(dead) from exc
            raise

    def _send(self, plan: RankPlan) -> None:
        self.check_ranks()
        frame = encode(plan)
        for pipe in self.plans:
            pipe.send_bytes(frame)  # a dead reader breaks the pipe: _guard turns that into RankDied

    # ---- the ModelRunner interface -------------------------------------------------------------
    def execute(self, plan: dict[Sequence, int]) -> tuple[list[Sequence], SamplerOutput | None]:
        host, sampled = self.runner.prepare_host(plan)
        with self._guard():
            self._send(step_plan(host))
            logits = self.runner.forward(self.runner.to_device(host))
        return sampled, self.runner.sample(logits, sampled)

    def export_kv(self, block_ids: list[int]) -> torch.Tensor:
        """Full-head rows [n, L, 2, B, Hkv, D]: each rank's head shard, gathered."""
        with self._guard():
            self._send(ExportBlocks(block_ids))
            parts = distributed.gather_list(self.kv.gather(block_ids))  # world x [n, L, 2, B, Hkv/world, D]
        return torch.cat(parts[:: self.replicas], dim=4)  # replicated heads once

    def import_kv(self, block_ids: list[int], rows: torch.Tensor) -> None:
        """Write full-head rows into the blocks; each rank keeps its own heads."""
        s = self.transfer_spec
        expected = (len(block_ids), s.num_layers, 2, s.block_size, s.num_kv_heads, s.head_dim)
        if tuple(rows.shape) != expected:
            raise ValueError(
                f"KV rows have shape {tuple(rows.shape)}, expected full-head rows {expected}; "
                "export and import engines must share model and block size"
            )
        rows = rows.to(device=self.device, dtype=self.dtype).contiguous()
        with self._guard():
            self._send(ImportBlocks(block_ids))
            distributed.broadcast(rows)
        self.kv.scatter(block_ids, head_shard(rows, self.runner))

    def copy_blocks_from(self, src_pool: torch.Tensor, src_ids: list[int], dst_ids: list[int]) -> None:
        raise NotImplementedError(
            "device-direct KV import runs at tensor_parallel_size 1 only; a TP engine imports KV through the store"
        )

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for pipe in self.plans:
            with contextlib.suppress(OSError):
                pipe.send_bytes(encode(Stop()))
        for p in self.ranks:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for pipe in self.plans:
            pipe.close()
        for p in self.ranks:
            if hasattr(p, "release"):  # a Ray actor outlives its run(): free it and its placement group
                p.release()
        distributed.shutdown()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.shutdown()
