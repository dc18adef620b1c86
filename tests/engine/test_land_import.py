"""A direct import lands at arrival (LLMEngine.land_import): its KV is copied into blocks of its own
before any step, and the answer is the colocated one.

The source is the prefill engine's own pool (on CPU the copy runs at once; on a GPU on a stream of
its own beside the step in flight, which the last test drives on a real device).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import torch

from contracts.sampling import SamplingParams
from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sequence import Sequence
from kv_transfer.direct import PeerBlocks

PROMPT = [(7 * i + 3) % 370 + 5 for i in range(45)]  # 2 full blocks + a partial one
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def make_engine(model_dir, **kw) -> LLMEngine:
    cfg = dict(model=str(model_dir), dtype="float32", kv_cache_bytes=4 << 20)
    return LLMEngine(EngineConfig(**{**cfg, **kw}))


def run(engine: LLMEngine, max_steps: int = 500) -> dict[str, list[int]]:
    outs: dict[str, list[int]] = {}
    for _ in range(max_steps):
        if not engine.has_unfinished():
            return outs
        for o in engine.step():
            if o.finished:
                outs[o.request_id] = o.output_token_ids
    raise AssertionError(f"the engine still has work after {max_steps} steps (a request never admitted?)")


def colocated(model_dir, prompt: list[int], params: SamplingParams) -> list[int]:
    engine = make_engine(model_dir)
    engine.add_request("c", prompt, params)
    return run(engine)["c"]


def prefilled(model_dir, prompt: list[int], params: SamplingParams, rid: str = "p") -> tuple[LLMEngine, int]:
    engine = make_engine(model_dir)
    engine.add_request(rid, prompt, params, prefill_only=True)
    first = [o.new_token_ids[0] for o in run_until_done(engine)][0]
    return engine, first


def run_until_done(engine: LLMEngine):
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    return outs


def peer_blocks(prefill: LLMEngine, rid: str, prompt: list[int], first_block: int = 0) -> PeerBlocks:
    ids = prefill.block_ids(rid, len(prompt))[first_block:]
    return PeerBlocks(prefill.runner.kv.pool, ids, time.monotonic() + 60)


@pytest.mark.parametrize(
    "params", [GREEDY, SamplingParams(temperature=0.8, seed=5, max_tokens=12, ignore_eos=True)], ids=["greedy", "seeded"]
)
def test_a_landed_import_holds_its_kv_before_any_step_and_answers_as_colocated(llama_dir, params) -> None:
    expected = colocated(llama_dir, PROMPT, params)
    prefill, first = prefilled(llama_dir, PROMPT, params)
    decode = make_engine(llama_dir)
    decode.import_request("d", PROMPT, params, peer_blocks(prefill, "p", PROMPT), len(PROMPT), first, evict_first=True)
    assert decode.land_import("d")
    seq = decode.requests["d"].seq
    assert seq.landed and seq.pending_kv is None and len(seq.block_table) == 3
    assert decode.runner.kv.pool[:, :, seq.block_table].equal(prefill.runner.kv.pool[:, :, prefill.block_ids("p", 45)])
    prefill.release("p")  # the peer may reuse its blocks: the copy is in ours already
    assert run(decode)["d"] == expected
    assert decode.load().active_blocks == 0


def test_a_landed_import_keeps_the_local_prefix_cache_hits(llama_dir) -> None:
    expected = colocated(llama_dir, PROMPT, GREEDY)
    prefill, first = prefilled(llama_dir, PROMPT, GREEDY)
    decode = make_engine(llama_dir)
    decode.add_request("warm", PROMPT[:32] + [1, 2], GREEDY)  # caches the 2 leading blocks
    run(decode)
    cached = decode.cached_prefix_blocks(PROMPT)
    assert cached == 2
    decode.import_request("d", PROMPT, GREEDY, peer_blocks(prefill, "p", PROMPT, cached), len(PROMPT), first, start_block=cached)
    assert decode.land_import("d")
    outs = [o for o in run_until_done(decode) if o.finished]
    assert outs[0].output_token_ids == expected
    assert outs[0].num_cached_tokens == len(PROMPT)


def test_aborting_a_landed_import_frees_every_block(llama_dir) -> None:
    prefill, first = prefilled(llama_dir, PROMPT, GREEDY)
    decode = make_engine(llama_dir)
    decode.import_request("d", PROMPT, GREEDY, peer_blocks(prefill, "p", PROMPT), len(PROMPT), first)
    assert decode.land_import("d")
    assert decode.load().active_blocks == 3
    assert decode.abort("d")
    assert decode.load().active_blocks == 0 and not decode.has_unfinished()
    # the engine serves on: a fresh request gets the colocated answer
    decode.add_request("c", PROMPT, GREEDY)
    assert run(decode)["c"] == colocated(llama_dir, PROMPT, GREEDY)


def test_a_copy_that_cannot_start_leaves_no_block_held(llama_dir) -> None:
    prefill, first = prefilled(llama_dir, PROMPT, GREEDY)
    decode = make_engine(llama_dir)
    pool = prefill.runner.kv.pool
    wrong = torch.zeros(pool.shape[0], pool.shape[1], pool.shape[2], pool.shape[3] * 2, *pool.shape[4:], dtype=pool.dtype)
    decode.import_request("d", PROMPT, GREEDY, PeerBlocks(wrong, [0, 1, 2], time.monotonic() + 60), len(PROMPT), first)
    with pytest.raises(ValueError, match="does not match"):
        decode.land_import("d")
    assert decode.load().active_blocks == 0
    assert decode.abort("d") and not decode.has_unfinished()  # what the decode worker then does


def test_landing_declines_when_blocks_are_short_and_the_admitting_step_copies(llama_dir) -> None:
    expected = colocated(llama_dir, PROMPT, GREEDY)
    prefill, first = prefilled(llama_dir, PROMPT, GREEDY)
    decode = make_engine(llama_dir, num_kv_blocks=6)
    decode.add_request("busy", [t + 1 for t in PROMPT[:40]], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    decode.step()  # running, 3 blocks: 3 free, and landing leaves one per running request
    decode.import_request("d", PROMPT, GREEDY, peer_blocks(prefill, "p", PROMPT), len(PROMPT), first)
    assert not decode.land_import("d")
    seq = decode.requests["d"].seq
    assert not seq.landed and not seq.block_table and seq.pending_kv is not None  # nothing changed
    assert run(decode)["d"] == expected


def test_with_copies_at_admission_nothing_lands_and_the_answer_is_the_same(llama_dir) -> None:
    prefill, first = prefilled(llama_dir, PROMPT, GREEDY)
    decode = make_engine(llama_dir, land_imports=False)  # a decode worker's --kv-copy-at admission
    decode.import_request("d", PROMPT, GREEDY, peer_blocks(prefill, "p", PROMPT), len(PROMPT), first)
    assert not decode.land_import("d") and decode.load().active_blocks == 0
    assert run(decode)["d"] == colocated(llama_dir, PROMPT, GREEDY)


def test_a_landed_import_is_admitted_past_a_request_that_cannot_start(llama_dir) -> None:
    """It holds the blocks the one ahead of it waits for: without going first, neither could run."""
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    expected = colocated(llama_dir, PROMPT, params)
    prefill, first = prefilled(llama_dir, PROMPT, params)
    decode = make_engine(llama_dir, num_kv_blocks=3)
    decode.add_request("ahead", PROMPT[:10], params)  # waiting, arrived first
    decode.import_request("d", PROMPT, params, peer_blocks(prefill, "p", PROMPT), len(PROMPT), first)
    assert decode.land_import("d")
    assert decode.blocks.num_free == 0
    outs = run(decode)
    assert outs["d"] == expected
    assert outs["ahead"] == colocated(llama_dir, PROMPT[:10], params)


@dataclass
class Passed:
    """A fence whose queued work has (or has not) run yet, as a CUDA event reports it."""

    done: bool = False

    def query(self) -> bool:
        return self.done


def test_blocks_freed_under_a_fence_are_not_given_to_a_copy_on_another_stream() -> None:
    fence = Passed()
    blocks = BlockManager(8, 4, "fp", fence_mark=lambda: fence)
    finished = Sequence("finished", list(range(10)), 10, GREEDY)
    blocks.allocate(finished, 10)
    freed = list(finished.block_table)
    blocks.release(finished)  # a step in flight may still write them
    assert blocks.num_free == 8 and blocks.num_unfenced_free() == 5
    landing = Sequence("landing", list(range(20)), 20, GREEDY)
    blocks.allocate(landing, 20, unfenced=True)
    assert not set(landing.block_table) & set(freed)
    with pytest.raises(RuntimeError, match="unfenced"):
        blocks.allocate(Sequence("more", list(range(4)), 4, GREEDY), 4, unfenced=True)
    # the engine's own stream runs after the fenced work: its allocations may take them
    own = Sequence("own", list(range(4)), 4, GREEDY)
    blocks.allocate(own, 4)
    assert own.block_table[0] in freed and own.block_table[0] not in blocks.fenced
    fence.done = True  # the step in flight has finished
    assert blocks.num_unfenced_free() == blocks.num_free == 2 and not blocks.fenced and not blocks.fences


def test_fences_pass_in_order_and_a_block_freed_again_keeps_its_newer_fence() -> None:
    marks = [Passed(), Passed()]
    blocks = BlockManager(8, 4, "fp", fence_mark=lambda: marks[0])
    a = Sequence("a", list(range(8)), 8, GREEDY)
    blocks.allocate(a, 8)
    a_blocks = list(a.block_table)
    blocks.release(a)  # fenced by marks[0]
    blocks.fence_mark = lambda: marks[1]
    b = Sequence("b", list(range(4)), 4, GREEDY)
    blocks.allocate(b, 4)  # the engine's stream: takes one of a's blocks (the head of the free list)
    reused = b.block_table[0]
    assert reused in a_blocks
    blocks.release(b)  # that block is fenced again, by the newer marks[1]
    assert blocks.num_unfenced_free() == 6
    marks[0].done = True
    assert blocks.num_unfenced_free() == 7  # a's other block passed; the one b freed waits for marks[1]
    assert list(blocks.fenced) == [reused]
    marks[1].done = True
    assert blocks.num_unfenced_free() == 8 and not blocks.fences


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: copies on a side stream beside steps in flight")
def test_imports_landing_beside_steps_in_flight_answer_as_colocated(llama_dir) -> None:
    """Decodes run one step ahead while requests finish (their blocks fenced) and imports land on
    the side stream; every answer matches the colocated engine's, and no landing took a fenced block."""
    prompts = {f"r{i}": [(11 * i + 5 * j + 1) % 370 + 5 for j in range(30 + 17 * i)] for i in range(8)}
    lengths = {rid: 4 + 3 * (i % 4) for i, rid in enumerate(prompts)}
    params = {rid: SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for rid, n in lengths.items()}
    expected = {rid: colocated(llama_dir, p, params[rid]) for rid, p in prompts.items()}
    decode = make_engine(llama_dir, num_kv_blocks=48, max_num_seqs=16)
    assert decode.config.device != "cpu" and decode._land_stream is not None
    ids = list(prompts)
    for rid in ids[:3]:
        decode.add_request(rid, prompts[rid], params[rid])
    landed_in_flight, outs = 0, {}
    for rid in ids[3:]:
        prefill, first = prefilled(llama_dir, prompts[rid], params[rid], rid)
        for o in decode.step():  # a step launched ahead, most likely, and requests finishing
            if o.finished:
                outs[o.request_id] = o.output_token_ids
        decode.import_request(rid, prompts[rid], params[rid], peer_blocks(prefill, rid, prompts[rid]), len(prompts[rid]), first)
        fenced = set(decode.blocks.fenced) if decode.blocks.num_unfenced_free() else set()
        in_flight = decode._inflight is not None
        assert decode.land_import(rid)
        assert not set(decode.requests[rid].seq.block_table) & fenced
        landed_in_flight += in_flight
        fence = decode.requests[rid].seq.landed_fence
        assert isinstance(fence, torch.cuda.Event)
        fence.synchronize()  # the peer's blocks may go now
        prefill.release(rid)
    outs.update(run(decode))
    assert outs == expected
    assert landed_in_flight > 0, "no import landed while a step was in flight: the test did not test the overlap"
