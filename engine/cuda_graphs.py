"""CUDA graphs for decode steps: one captured forward per batch-size bucket, replayed on static buffers.

A decode step (every scheduled sequence brings exactly one new token) is padded to
the next bucket. The captured region is embedding -> layers -> final norm -> logits
of every row; it reads only the static buffers below, which each step refills with
one host-to-device copy per buffer from pinned staging memory. Padded rows are
harmless: they write their K/V into the KV pool's scratch block (owned by no
sequence) and attend to the one key there (seq_len 1).

Block tables are padded to the widest possible table (max_model_len / block_size)
so one graph serves every context length; the Triton kernel masks keys by seq_len,
so columns past a row's own blocks are never read.

On a non-CUDA device nothing is captured: ``run`` executes the same padded forward
on the same static buffers eagerly, which lets CPU tests check the padding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from engine.models.decoder import DecoderForCausalLM
from engine.sequence import Sequence
from engine.step_metadata import StepMetadata

log = logging.getLogger(__name__)


def decode_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, ... below ``max_batch``, then ``max_batch`` itself."""
    buckets, b = [], 1
    while b < max_batch:
        buckets.append(b)
        b *= 2
    return buckets + [max_batch]


@dataclass(slots=True)
class _Captured:
    graph: torch.cuda.CUDAGraph | None  # None: not a CUDA device, run() executes the forward
    logits: torch.Tensor | None  # [b, V] float32, written by every replay


class DecodeGraphs:
    def __init__(
        self,
        model: DecoderForCausalLM,
        max_batch: int,
        max_blocks_per_seq: int,
        block_size: int,
        scratch_block: int,
        num_heads: int,  # query heads of this rank
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.model = model
        self.buckets = decode_buckets(max_batch)
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.scratch_slot = scratch_block * block_size
        self.device = device
        b, w = self.buckets[-1], max_blocks_per_seq
        # static device inputs; rows 0..2 of `tokens`: input_ids, positions, slot_mapping
        self.tokens = torch.zeros(3, b, dtype=torch.long, device=device)  # [3, B]
        self.seq_lens = torch.ones(b, dtype=torch.int32, device=device)  # [B]
        self.block_tables = torch.full((b, w), scratch_block, dtype=torch.int32, device=device)  # [B, W]
        self.cu_seqlens_q = torch.arange(b + 1, dtype=torch.int32, device=device)  # [B+1], one query per row
        self.attn_out = torch.empty(b, num_heads, head_dim, dtype=dtype, device=device)  # [B, Hq, D]
        # pinned host staging of the same (block tables: a [b, w] prefix, contiguous)
        pin = device.type == "cuda"
        self.host_tokens = torch.zeros(3, b, dtype=torch.long, pin_memory=pin)
        self.host_seq_lens = torch.ones(b, dtype=torch.int32, pin_memory=pin)
        self.host_tables = torch.zeros(b * w, dtype=torch.int32, pin_memory=pin)
        self.np_tokens, self.np_seq_lens, self.np_tables = (
            self.host_tokens.numpy(),
            self.host_seq_lens.numpy(),
            self.host_tables.numpy(),
        )
        # staging may be rewritten once the last step's copies are done
        self.copied = torch.cuda.Event() if pin else None
        self.graphs: dict[int, _Captured] = {}

    def _meta(self, b: int) -> StepMetadata:
        return StepMetadata(
            input_ids=self.tokens[0, :b],
            positions=self.tokens[1, :b],
            slot_mapping=self.tokens[2, :b],
            cu_seqlens_q=self.cu_seqlens_q[: b + 1],
            seq_lens=self.seq_lens[:b],
            block_tables=self.block_tables[:b],
            logits_indices=self.cu_seqlens_q[:b].long(),  # unused: the graph computes every row's logits
            max_q_len=1,
            attn_out=self.attn_out[:b],
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first, all in one memory pool; raises if capture fails."""
        self.tokens[2].fill_(self.scratch_slot)  # warm-up and capture runs write only the scratch block
        if self.device.type != "cuda":
            self.graphs = {b: _Captured(None, None) for b in self.buckets}
            return
        pool = None
        for b in reversed(self.buckets):
            meta = self._meta(b)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up off the capture stream: Triton compiles, allocator primes
                self.model.compute_logits(self.model(meta))
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = self.model.compute_logits(self.model(meta))  # [b, V] float32
            pool = graph.pool()
            self.graphs[b] = _Captured(graph, logits)
        torch.cuda.synchronize(self.device)
        log.info("captured decode CUDA graphs for batch sizes %s", self.buckets)

    def fits(self, plan: dict[Sequence, int]) -> bool:
        """A decode step this object can run: one token per sequence, at most the largest bucket."""
        return len(plan) <= self.buckets[-1] and all(n == 1 for n in plan.values())

    @torch.inference_mode()
    def run(self, plan: dict[Sequence, int], input_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, list[Sequence]]:
        """(logits [S', V] of the sampled rows, those sequences) for a decode plan (``fits``).

        ``input_ids`` [S] (device): the step's input tokens are still on the device (the previous
        step's samples, row i for plan sequence i, not yet in ``seq.token_ids``); every row is sampled.
        """
        num_seqs = len(plan)
        b = next(x for x in self.buckets if x >= num_seqs)
        block_size = self.block_size
        if self.copied is not None:
            self.copied.synchronize()  # the previous step's copies have left the staging buffers
        tokens, seq_lens = self.np_tokens, self.np_seq_lens
        width = max(len(seq.block_table) for seq in plan)
        tables = self.np_tables[: b * width].reshape(b, width)
        sampled: list[Sequence] = []
        rows: list[int] = []
        for i, seq in enumerate(plan):
            pos = seq.num_computed_tokens
            table = seq.block_table
            tokens[0, i] = seq.token_ids[pos] if input_ids is None else 0
            tokens[1, i] = pos
            tokens[2, i] = table[pos // block_size] * block_size + pos % block_size
            seq_lens[i] = pos + 1
            tables[i, : len(table)] = table
            if input_ids is not None or pos + 1 == seq.num_tokens:
                sampled.append(seq)
                rows.append(i)
        tokens[:, num_seqs:b] = ((0,), (0,), (self.scratch_slot,))
        seq_lens[num_seqs:b] = 1
        tables[num_seqs:b, 0] = self.scratch_block
        self.tokens.copy_(self.host_tokens, non_blocking=True)  # whole [3, B]: one dense copy of a few KB
        self.seq_lens[:b].copy_(self.host_seq_lens[:b], non_blocking=True)
        self.block_tables[:b, :width].copy_(self.host_tables[: b * width].view(b, width), non_blocking=True)
        if input_ids is not None:
            self.tokens[0, :num_seqs].copy_(input_ids[:num_seqs])  # device to device, after the staging copy
        captured = self.graphs[b]
        if captured.graph is not None and captured.logits is not None:
            if self.copied is not None:
                self.copied.record()
            captured.graph.replay()
            logits = captured.logits[:num_seqs]  # [S, V], a view of the graph's output: valid until the next replay
        else:
            logits = self.model.compute_logits(self.model(self._meta(b)))[:num_seqs]
        if len(rows) != num_seqs:
            logits = logits[torch.tensor(rows, device=self.device)]
        return logits, sampled
