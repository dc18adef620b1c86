"""Prefill worker -> KV transport -> decode worker gives exactly the colocated engine's tokens,
through each transport: the device-direct pull (prefill A), the store (prefill B; ours or Mooncake
Store) and the point-to-point send (prefill C, gloo on CPU)."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
from worker_processes import WorkerProcess, colocated

from contracts.rpc import worker_pb2 as pb
from contracts.sampling import SamplingParams


def disaggregated(
    prefill: WorkerProcess, decode: WorkerProcess, rid: str, prompt: list[int], sp: pb.SamplingParams
) -> tuple[list[int], pb.PrefillResponse, pb.GenerateChunk | None]:
    with prefill.channel() as pc, decode.channel() as dc:
        first = prefill.stub(pc).Prefill(pb.PrefillRequest(request_id=rid, prompt_token_ids=prompt, sampling=sp), timeout=60)
        tokens = [first.first_token_id]
        last = None
        if not first.finish_reason:
            request = pb.GenerateRequest(
                request_id=rid,
                prompt_token_ids=prompt,
                sampling=sp,
                kv_handle=first.kv_handle,
                first_token_id=first.first_token_id,
            )
            for last in decode.stub(dc).Generate(request, timeout=60):
                tokens += list(last.token_ids)
        return tokens, first, last


def mixed_requests(tag: str, n: int, temperature: float) -> list[tuple[str, list[int], pb.SamplingParams, SamplingParams]]:
    rng = random.Random(f"{tag}-{n}")
    lengths = [1, 5, 15, 16, 17, 31, 32, 33, 47, 64, 65, 100, 130]
    out = []
    for i in range(n):
        prompt = [rng.randrange(3, 384) for _ in range(lengths[i % len(lengths)] + (i // len(lengths)) * 3)]
        max_tokens = rng.randrange(2, 12)
        seed = 1000 + i if temperature > 0 else None
        wire = pb.SamplingParams(temperature=temperature, top_p=1.0, max_tokens=max_tokens, ignore_eos=True, seed=seed)
        params = SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=seed, ignore_eos=True)
        out.append((f"{tag}-{i}", prompt, wire, params))
    return out


TRANSPORTS = {"direct": "prefill_a", "store": "prefill_b", "p2p": "prefill_c"}


def transferred_bytes(worker: WorkerProcess, transport: str) -> float:
    """KV bytes this worker imported through ``transport`` (its /metrics)."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("splitserve_worker_kv_transfer_bytes_total{")
        and 'direction="in"' in line
        and f'transport="{transport}"' in line
    )


@pytest.mark.parametrize(("transport", "backend_stack"), [("direct", "ours"), ("store", "ours"), ("p2p", "ours"),
                                                      ("store", "mooncake")], indirect=["backend_stack"])  # fmt: skip
@pytest.mark.parametrize("temperature", [0.0, 0.9], ids=["greedy", "seeded"])
def test_disaggregated_output_equals_colocated_output(backend_stack, reference, temperature: float, transport: str) -> None:
    stack = backend_stack.workers
    requests = mixed_requests(f"eq{temperature}-{transport}-{backend_stack.backend}", 50, temperature)
    expected = colocated(reference, [(rid, prompt, params) for rid, prompt, _, params in requests])
    prefill, decode = stack[TRANSPORTS[transport]], stack["decode"]
    before = {t: transferred_bytes(decode, t) for t in TRANSPORTS}
    with ThreadPoolExecutor(8) as pool:
        futures = {rid: pool.submit(disaggregated, prefill, decode, rid, prompt, wire) for rid, prompt, wire, _ in requests}
        got = {rid: f.result() for rid, f in futures.items()}
    assert transferred_bytes(decode, transport) > before[transport]  # the KV came this way...
    for other in set(TRANSPORTS) - {transport}:
        assert transferred_bytes(decode, other) == before[other]  # ...and no other way
    for rid, prompt, wire, _ in requests:
        tokens, first, last = got[rid]
        assert first.kv_handle.HasField("direct") == (transport == "direct")
        assert first.kv_handle.HasField("peer") == (transport == "p2p")
        assert tokens == expected[rid], f"{rid} (prompt of {len(prompt)} tokens) diverged"
        assert first.kv_handle.num_tokens == len(prompt)
        assert len(first.kv_handle.block_keys) == len(prompt) // 16
        assert bool(first.kv_handle.tail_key) == bool(len(prompt) % 16)
        assert last is not None, f"{rid}: the decode worker streamed nothing"
        assert last.finish_reason == "length" and last.completion_tokens == wire.max_tokens
        assert last.num_cached_tokens == len(prompt)  # the decode worker computed no prompt token


@pytest.mark.parametrize("backend_stack", ["ours", "mooncake"], indirect=True)
def test_prefix_prefilled_on_worker_a_is_reused_by_worker_b_through_store(backend_stack, reference) -> None:
    stack = backend_stack.workers
    rng = random.Random(5)
    shared = [rng.randrange(3, 384) for _ in range(70)]  # 4 full blocks + a tail of 6
    suffix = [rng.randrange(3, 384) for _ in range(20)]
    sp = pb.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    _, on_a, _ = disaggregated(stack["prefill_a"], stack["decode"], "reuse-a", shared, sp)
    assert on_a.num_computed_tokens == 70 and on_a.num_cached_tokens == 0
    tokens, on_b, _ = disaggregated(stack["prefill_b"], stack["decode"], "reuse-b", shared + suffix, sp)
    assert on_b.num_cached_tokens == 64  # the 4 full blocks came from the store
    assert on_b.num_computed_tokens == 90 - 64
    expected = colocated(
        reference, [("reuse-ref", shared + suffix, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))]
    )
    assert tokens == expected["reuse-ref"]
