"""Loads the model, owns the KV pool, turns a step plan into StepMetadata, runs and samples."""

from __future__ import annotations

import contextlib
import gc
import logging
from pathlib import Path

import numpy as np
import torch

from engine import distributed
from engine.attention import use_triton
from engine.checkpoint import init_dummy_weights, load_hf_config, load_weights
from engine.config import DEFAULT_CPU_KV_CACHE_BYTES, EngineConfig
from engine.cuda_graphs import DecodeGraphs
from engine.kv_cache import KVCache, KVCacheSpec, gpu_kv_budget, num_blocks_for_budget
from engine.models.decoder import DecoderForCausalLM
from engine.models.registry import arch_features
from engine.moe import SparseMoE, grouped_mm_works
from engine.sampler import Sampler, SamplerOutput, SamplingBatch
from engine.sequence import Sequence
from engine.step_metadata import StepMetadata
from engine.structured_output import BitmaskFiller

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, hf_config, device: torch.device) -> torch.dtype:
    if name != "auto":
        return _DTYPES[name]
    ckpt = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None) or torch.float32
    ckpt = _DTYPES.get(ckpt, torch.float32) if isinstance(ckpt, str) else ckpt
    if device.type == "cpu" and ckpt != torch.float32:
        return torch.float32  # half-precision matmuls are slow or missing on CPU
    return ckpt


class ModelRunner:
    def __init__(self, config: EngineConfig, eos_token_ids: set[int]) -> None:
        # at TP 1 ignore a process group that a parallel engine in this process may hold
        with distributed.single_rank() if config.tensor_parallel_size == 1 else contextlib.nullcontext():
            self._build(config, eos_token_ids)

    def _build(self, config: EngineConfig, eos_token_ids: set[int]) -> None:
        self.config = config
        model_dir = Path(config.model)
        self.hf_config = load_hf_config(model_dir)
        self.arch, features = arch_features(getattr(self.hf_config, "architectures", None))
        self.device = resolve_device(config.device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", distributed.tp_rank() % torch.cuda.device_count())  # one GPU per rank
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.dtype = resolve_dtype(config.dtype, self.hf_config, self.device)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                self.model = DecoderForCausalLM(self.hf_config, features)
        finally:
            torch.set_default_dtype(previous)
        if config.load_format == "dummy":
            init_dummy_weights(self.model)
        else:
            load_weights(self.model, model_dir)
        self.model.eval()
        self._fuse_experts()
        self.vocab_size = self.hf_config.vocab_size
        self.sampler = Sampler(eos_token_ids=eos_token_ids)
        self.bitmasks = BitmaskFiller(self.vocab_size)
        attn = self.model.attention_layers()
        self.kv_spec = KVCacheSpec(len(attn), config.block_size, attn[0].num_kv_heads, attn[0].head_dim, self.dtype)
        wants_graphs = self._wants_graphs()
        shared_file = config.kv_pool_file if self.device.type == "cpu" else None  # CUDA pools share through IPC
        self.kv = KVCache(
            self.kv_spec, self._num_blocks(wants_graphs), self.device, scratch_block=wants_graphs, shared_file=shared_file
        )
        for layer, k, v in zip(attn, self.kv.k, self.kv.v):
            layer.k_cache, layer.v_cache = k, v
        if self.device.type == "cuda" and use_triton(self.device):
            from engine import triton_attention  # not at import: importing triton fixes TRITON_INTERPRET

            a = attn[0]
            triton_attention.warm_up(self.device, self.dtype, a.num_heads, a.num_kv_heads, a.head_dim, config.block_size)
        self.graphs = self._capture_graphs() if wants_graphs else None
        self.use_graphs = True  # bench --check-graphs turns it off to compare with eager steps

    def _fuse_experts(self) -> None:
        """CUDA bf16: stack expert weights for the grouped-GEMM MoE path (else MoE falls back, still sync-free)."""
        moes = [m for m in self.model.modules() if isinstance(m, SparseMoE)]
        if not moes or self.device.type != "cuda" or self.dtype != torch.bfloat16:
            return
        if not grouped_mm_works(self.device):
            log.warning("torch._grouped_mm is not usable on %s; MoE layers run every expert densely", self.device)
            return
        for moe in moes:
            moe.fuse_experts()

    def _wants_graphs(self) -> bool:
        if self.config.enforce_eager or not self._graph_device():
            return False
        if self.config.tensor_parallel_size > 1:
            log.info("CUDA graphs are not used under tensor parallelism yet; decode runs eagerly")
            return False
        return True

    def _graph_device(self) -> bool:
        """Whether decode graphs can run here: CUDA with the Triton attention (no host lists in the layers)."""
        if self.device.type != "cuda":
            return False
        if not use_triton(self.device):
            log.info("CUDA graphs need the Triton attention (SPLITSERVE_ATTENTION=torch is set); decode runs eagerly")
            return False
        return True

    def _capture_graphs(self) -> DecodeGraphs | None:
        cfg = self.config
        max_len = cfg.max_model_len or self.hf_config.max_position_embeddings
        attn = self.model.attention_layers()[0]
        if self.kv.scratch_block is None:
            raise RuntimeError("decode graphs need the KV pool's scratch block (KVCache(scratch_block=True))")
        graphs = DecodeGraphs(
            self.model,
            min(cfg.max_num_seqs, cfg.max_num_batched_tokens),
            -(-max_len // cfg.block_size),
            cfg.block_size,
            self.kv.scratch_block,
            attn.num_heads,
            attn.head_dim,
            self.dtype,
            self.device,
        )
        try:
            graphs.capture()
        except Exception as exc:  # any capture failure: serve eagerly rather than not at all
            log.warning(
                "CUDA graph capture failed (%s: %s); decode runs eagerly (set enforce_eager to skip capture)",
                type(exc).__name__,
                exc,
            )
            torch.cuda.synchronize(self.device)
            return None
        return graphs

    def _num_blocks(self, scratch_block: bool) -> int:
        """Blocks the block manager may hand out (a scratch block, if any, comes on top of an exact count)."""
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        if self.config.kv_cache_bytes is not None:  # an explicit byte budget wins on any device
            budget = self.config.kv_cache_bytes
        elif self.device.type == "cuda":
            self._warm_up()
            budget = gpu_kv_budget(self.device, self.config.gpu_memory_utilization)
        else:
            budget = DEFAULT_CPU_KV_CACHE_BYTES
        # every rank must hold the same blocks: take the smallest pool any rank can afford
        blocks = distributed.all_reduce_min(num_blocks_for_budget(self.kv_spec, budget), self.device)
        return max(0, blocks - int(scratch_block))

    @torch.inference_mode()
    def _warm_up(self) -> None:
        """One full-budget prefill over a throwaway cache, to measure peak activation memory."""
        # An engine closed earlier in this process may still hold its pool in cycles or in the
        # caching allocator, where the free memory the budget reads cannot see it (a second engine
        # in one process found no room for a single block on the H200): release it first.
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        n = min(self.config.max_num_batched_tokens, self.hf_config.max_position_embeddings)
        block_size, dev = self.config.block_size, self.device
        num_blocks = -(-n // block_size)
        shape = (num_blocks, block_size, self.kv_spec.num_kv_heads, self.kv_spec.head_dim)  # [N, B, Hkv, D]
        for layer in self.model.attention_layers():
            layer.k_cache = torch.zeros(shape, dtype=self.dtype, device=dev)
            layer.v_cache = torch.zeros(shape, dtype=self.dtype, device=dev)
        meta = StepMetadata(
            input_ids=torch.zeros(n, dtype=torch.long, device=dev),
            positions=torch.arange(n, device=dev),
            slot_mapping=torch.arange(n, device=dev),
            cu_seqlens_q=torch.tensor([0, n], dtype=torch.int32, device=dev),
            seq_lens=torch.tensor([n], dtype=torch.int32, device=dev),
            block_tables=torch.arange(num_blocks, dtype=torch.int32, device=dev)[None],
            logits_indices=torch.tensor([n - 1], device=dev),
            max_q_len=n,
        )
        self.model.compute_logits(self.model(meta)[meta.logits_indices])
        torch.cuda.synchronize(self.device)
        for layer in self.model.attention_layers():
            layer.k_cache = layer.v_cache = torch.empty(0)
        torch.cuda.empty_cache()

    def prepare(self, plan: dict[Sequence, int]) -> tuple[StepMetadata, list[Sequence]]:
        """Flat metadata of a step (on the device), and the sequences that get a new token this step."""
        host, sampled = self.prepare_host(plan)
        return self.to_device(host), sampled

    def to_device(self, host: StepMetadata) -> StepMetadata:
        dev = self.device
        return StepMetadata(
            input_ids=host.input_ids.to(dev, non_blocking=True),
            positions=host.positions.to(dev, non_blocking=True),
            slot_mapping=host.slot_mapping.to(dev, non_blocking=True),
            cu_seqlens_q=host.cu_seqlens_q.to(dev, non_blocking=True),
            seq_lens=host.seq_lens.to(dev, non_blocking=True),
            block_tables=host.block_tables.to(dev, non_blocking=True),
            logits_indices=host.logits_indices.to(dev, non_blocking=True),
            max_q_len=host.max_q_len,
            cu_seqlens_q_host=host.cu_seqlens_q_host,
            seq_lens_host=host.seq_lens_host,
        )

    def prepare_host(self, plan: dict[Sequence, int]) -> tuple[StepMetadata, list[Sequence]]:
        """Like ``prepare`` with CPU tensors (what rank 0 sends to the other ranks)."""
        block_size = self.config.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        cu = [0]
        seq_lens: list[int] = []
        logits_rows: list[int] = []
        sampled: list[Sequence] = []
        max_blocks = 0
        for seq, n in plan.items():
            start = seq.num_computed_tokens
            end = start + n
            table = seq.block_table
            max_blocks = max(max_blocks, len(table))
            if n == 1:  # decode: no slicing, no per-token loop
                input_ids.append(seq.token_ids[start])
                positions.append(start)
                slots.append(table[start // block_size] * block_size + start % block_size)
            else:
                input_ids += seq.token_ids[start:end]
                positions += range(start, end)
                pos = np.arange(start, end)  # [n]
                slots += (np.asarray(table)[pos // block_size] * block_size + pos % block_size).tolist()
            cu.append(cu[-1] + n)
            seq_lens.append(end)
            if end == seq.num_tokens:  # the chunk reaches the last token: sample the next one
                logits_rows.append(cu[-1] - 1)
                sampled.append(seq)
        tables = np.zeros((len(plan), max_blocks), dtype=np.int32)  # [S, max_blocks], padded with 0
        for i, seq in enumerate(plan):
            tables[i, : len(seq.block_table)] = seq.block_table
        meta = StepMetadata(
            input_ids=torch.tensor(input_ids, dtype=torch.long),
            positions=torch.tensor(positions, dtype=torch.long),
            slot_mapping=torch.tensor(slots, dtype=torch.long),
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            block_tables=torch.from_numpy(tables),
            logits_indices=torch.tensor(logits_rows, dtype=torch.long),
            max_q_len=max(plan.values()),
            cu_seqlens_q_host=cu,
            seq_lens_host=seq_lens,
        )
        return meta, sampled

    @torch.inference_mode()
    def forward(self, meta: StepMetadata) -> torch.Tensor | None:
        """Logits [S, V] of the sampled rows (None if none); every TP rank runs this on the same meta."""
        hidden = self.model(meta)  # [T, H]
        if meta.logits_indices.numel() == 0:
            return None
        return self.model.compute_logits(hidden[meta.logits_indices])  # [S, V], all-gathered vocab shards

    @torch.inference_mode()
    def execute(self, plan: dict[Sequence, int]) -> tuple[list[Sequence], SamplerOutput | None]:
        if self.graphs is not None and self.use_graphs and self.graphs.fits(plan):
            logits, sampled = self.graphs.run(plan)  # decode step: replay a captured graph
            return sampled, self.sample(logits if sampled else None, sampled)
        meta, sampled = self.prepare(plan)
        return sampled, self.sample(self.forward(meta), sampled)

    @torch.inference_mode()
    def execute_ahead(self, plan: dict[Sequence, int], input_ids: torch.Tensor) -> tuple[list[Sequence], SamplerOutput]:
        """A greedy decode step (graph replay) whose input tokens [S] are the previous step's samples, still on the device."""
        if self.graphs is None:
            raise RuntimeError("execute_ahead needs captured decode graphs: ask can_run_ahead first")
        logits, sampled = self.graphs.run(plan, input_ids=input_ids)
        return sampled, Sampler.argmax(logits)

    def can_run_ahead(self, plan: dict[Sequence, int]) -> bool:
        """Whether ``execute_ahead`` can run ``plan`` (decode graphs are captured and in use)."""
        return self.graphs is not None and self.use_graphs and self.graphs.fits(plan)

    def sample(self, logits: torch.Tensor | None, sampled: list[Sequence]) -> SamplerOutput | None:
        if logits is None:
            return None
        params = [s.params for s in sampled]
        if Sampler.argmax_suffices(params, [s.num_tokens - s.num_prompt_tokens for s in sampled]):
            return Sampler.argmax(logits)  # greedy fast path: no prompt/output copies, no penalty work
        batch = SamplingBatch(
            params=params,
            prompt_token_ids=[s.prompt_token_ids for s in sampled],
            output_token_ids=[s.output_token_ids for s in sampled],
            # filled on the host while a CUDA forward is still in flight (nothing above waited on it)
            token_bitmask=self.bitmasks.fill([s.grammar for s in sampled]),
        )
        return self.sampler(logits, batch)

    # ---- KV transfer rows [n, L, 2, B, Hkv, D]: at TP 1 the local pool is all the heads ----
    @property
    def transfer_spec(self) -> KVCacheSpec:
        return self.kv_spec

    def export_kv(self, block_ids: list[int]) -> torch.Tensor:
        return self.kv.gather(block_ids)

    def import_kv(self, block_ids: list[int], rows: torch.Tensor) -> None:
        self.kv.scatter(block_ids, rows)

    def copy_blocks_from(self, src_pool: torch.Tensor, src_ids: list[int], dst_ids: list[int]) -> None:
        """Blocks of a peer engine's pool (mapped into this process) into ours: no host staging."""
        self.kv.copy_blocks_from(src_pool, src_ids, dst_ids)

    def shutdown(self) -> None:
        pass
