"""Simulated workers over the real worker gRPC API: their times follow the profile."""

import asyncio
import time

import grpc
import pytest
from sim_profile import TEST_PROFILE, within

from contracts.rpc import worker_pb2, worker_pb2_grpc
from kvstore.block_key import block_keys
from router.kv_event_subscriber import KVEventSubscriber
from router.prefix_index import PrefixIndex
from simulator.cluster import ClusterConfig, SimCluster
from simulator.profile import ProfileError, load_profile, parse_profile

pytestmark = pytest.mark.timeout(60)
P = TEST_PROFILE


@pytest.fixture
async def cluster():
    c = await SimCluster.start(ClusterConfig(P, prefill=1, decode=1, fingerprint="fp"))
    yield c
    await c.stop()


def stubs(cluster: SimCluster):
    p = grpc.aio.insecure_channel(cluster.addresses("prefill")[0])
    d = grpc.aio.insecure_channel(cluster.addresses("decode")[0])
    return worker_pb2_grpc.PrefillServiceStub(p), worker_pb2_grpc.DecodeServiceStub(d)


def prefill_request(rid: str, prompt: list[int], max_tokens: int = 8) -> worker_pb2.PrefillRequest:
    return worker_pb2.PrefillRequest(
        request_id=rid, prompt_token_ids=prompt, sampling=worker_pb2.SamplingParams(max_tokens=max_tokens)
    )


async def timed(coro):
    start = time.monotonic()
    result = await coro
    return result, time.monotonic() - start


async def collect(call) -> tuple[list[worker_pb2.GenerateChunk], float, float]:
    """Chunks, time to the first chunk, time to the end."""
    start, first, chunks = time.monotonic(), None, []
    async for chunk in call:
        first = first if first is not None else time.monotonic() - start
        chunks.append(chunk)
    assert first is not None, "the stream sent no chunk"
    return chunks, first, time.monotonic() - start


async def test_prefill_time_follows_the_profile_for_new_and_cached_tokens(cluster):
    prefill, _ = stubs(cluster)
    await prefill.GetLoad(worker_pb2.LoadRequest())  # connect first: the channel set-up is not the worker's time
    prompt = list(range(1000, 3000))
    cold, cold_s = await timed(prefill.Prefill(prefill_request("a", prompt)))
    assert (cold.num_cached_tokens, cold.num_computed_tokens) == (0, 2000)
    assert within(cold_s, P.prefill.seconds(2000, 0))  # 0.21 s
    warm, warm_s = await timed(prefill.Prefill(prefill_request("b", prompt)))
    assert (warm.num_cached_tokens, warm.num_computed_tokens) == (1999, 1)  # the last token is always computed
    assert within(warm_s, P.prefill.seconds(1, 1999))


async def test_prefills_on_one_worker_queue_first_come_first_served(cluster):
    prefill, _ = stubs(cluster)
    await prefill.GetLoad(worker_pb2.LoadRequest())
    start = time.monotonic()
    calls = [
        asyncio.ensure_future(prefill.Prefill(prefill_request(f"r{i}", list(range(i * 5000, i * 5000 + 1000))))) for i in range(3)
    ]
    await asyncio.sleep(0.05)
    load = await prefill.GetLoad(worker_pb2.LoadRequest())
    assert (load.running_requests, load.waiting_requests, load.queued_prefill_tokens) == (1, 2, 3000)
    done = []
    for call in calls:
        await call
        done.append(time.monotonic() - start)
    one = P.prefill.seconds(1000, 0)
    for i, t in enumerate(done):
        assert within(t, (i + 1) * one), (i, t)


async def test_decode_steps_follow_the_profile_for_batch_size(cluster):
    _, decode = stubs(cluster)
    await decode.GetLoad(worker_pb2.LoadRequest())

    def generate(i: int):
        prompt = list(range(i * 1000, i * 1000 + 100))
        return decode.Generate(worker_pb2.GenerateRequest(request_id=f"g{i}", prompt_token_ids=prompt,
                                                          sampling=worker_pb2.SamplingParams(max_tokens=20)))  # fmt: skip

    chunks, first_s, total_s = await collect(generate(0))
    assert sum(len(c.token_ids) for c in chunks) == 20 and chunks[-1].finish_reason == "length"
    assert within(first_s, P.prefill.seconds(100, 0) + P.decode.step_seconds(1, 0))
    assert within(total_s, P.prefill.seconds(100, 0) + 20 * P.decode.step_seconds(1, 0))  # 0.52 s

    results = await asyncio.gather(*(collect(generate(i)) for i in range(1, 5)))  # one batch of 4
    # The first arrival may run one step alone before the other three join.
    fastest = 20 * P.decode.step_seconds(4, 0)  # 0.80 s: every step at batch 4
    slowest = 4 * P.prefill.seconds(100, 0) + 20 * P.decode.step_seconds(4, 0) + P.decode.step_seconds(1, 0)  # 0.905 s
    for chunks, _, total_s in results:
        assert chunks[-1].completion_tokens == 20
        assert fastest <= total_s <= slowest * 1.1 + 0.1


async def test_a_disaggregated_request_imports_the_prompt_kv_then_continues_after_the_first_token(cluster):
    prefill, decode = stubs(cluster)
    await asyncio.gather(prefill.GetLoad(worker_pb2.LoadRequest()), decode.GetLoad(worker_pb2.LoadRequest()))
    prompt = list(range(7000, 9000))
    first = await prefill.Prefill(prefill_request("d", prompt, max_tokens=10))
    request = worker_pb2.GenerateRequest(
        request_id="d",
        prompt_token_ids=prompt,
        sampling=worker_pb2.SamplingParams(max_tokens=10),
        first_token_id=first.first_token_id,
    )
    request.kv_handle.CopyFrom(first.kv_handle)
    chunks, _, total_s = await collect(decode.Generate(request))
    assert sum(len(c.token_ids) for c in chunks) == 9  # the prefill worker sampled the first
    assert chunks[-1].completion_tokens == 10 and chunks[-1].num_cached_tokens == 2000
    transfer = P.transfer.seconds(2000 * P.kv_bytes_per_token)
    assert within(total_s, transfer + 9 * P.decode.step_seconds(1, 0))


async def test_kv_events_keep_the_router_prefix_index_exact_through_evictions():
    cluster = await SimCluster.start(ClusterConfig(P, prefill=1, decode=0, fingerprint="fp", capacity_blocks=200))
    index = PrefixIndex()
    subscriber = KVEventSubscriber(index)
    subscriber.start()
    try:
        prefill, _ = stubs_prefill_only(cluster)
        load = await prefill.GetLoad(worker_pb2.LoadRequest())
        subscriber.add_publisher(load.worker_id, load.kv_events_endpoint, load.kv_snapshot_endpoint)
        assert await asyncio.to_thread(subscriber.wait_for, lambda: subscriber.is_synced(load.worker_id))
        a, b = list(range(0, 2000)), list(range(50_000, 52_000))  # 125 blocks each; 200 fit
        await prefill.Prefill(prefill_request("a", a))
        keys_a = block_keys(a, "fp", 16)
        assert await asyncio.to_thread(subscriber.wait_for, lambda: index.match(keys_a) == {load.worker_id: 125})
        await prefill.Prefill(prefill_request("b", b))
        keys_b = block_keys(b, "fp", 16)
        # b's 125 blocks evicted 50 of a's, deepest first: a keeps a 75-block prefix. The worker
        # publishes the removals before b's stores, so the index may briefly show the one without the other.
        expected = {"a": {load.worker_id: 75}, "b": {load.worker_id: 125}}
        assert await asyncio.to_thread(
            subscriber.wait_for, lambda: {"a": index.match(keys_a), "b": index.match(keys_b)} == expected
        )
    finally:
        subscriber.close()
        await cluster.stop()


def stubs_prefill_only(cluster: SimCluster):
    return worker_pb2_grpc.PrefillServiceStub(grpc.aio.insecure_channel(cluster.addresses("prefill")[0])), None


async def test_bad_requests_get_a_grpc_status_with_details(cluster):
    prefill, decode = stubs(cluster)
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await prefill.Prefill(prefill_request("e", []))
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in empty.value.details()
    huge = list(range(70_000))  # the worker holds 64,000 tokens of KV
    with pytest.raises(grpc.aio.AioRpcError) as too_big:
        await prefill.Prefill(prefill_request("h", huge))
    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "KV blocks" in too_big.value.details()
    call = decode.Generate(
        worker_pb2.GenerateRequest(request_id="z", prompt_token_ids=[1, 2], sampling=worker_pb2.SamplingParams(max_tokens=0))
    )
    with pytest.raises(grpc.aio.AioRpcError) as zero:
        await collect(call)
    assert zero.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_tokens" in zero.value.details()


def test_the_shipped_h200_profile_loads_and_a_bad_profile_names_its_problem(tmp_path):
    h200 = load_profile("h200-llama-3.1-8b")
    assert 0.4 < h200.prefill.seconds(15_000, 0) < 0.8  # a 15k-token prompt: ~0.59 s
    assert 6e-3 < h200.decode.step_seconds(1, 512) < 7e-3  # the measured 6.42 ms step
    assert h200.derivation["prefill.per_new_token_s"]
    with pytest.raises(ProfileError, match="missing field 'decode'"):
        parse_profile({"name": "x", "hardware": "x", "model": "x", "kv_bytes_per_token": 1, "kv_capacity_tokens": 1,
                       "prefill": {"fixed_s": 0, "per_new_token_s": 0, "per_attention_pair_s": 0}})  # fmt: skip
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(str(bad))


def test_splitserve_sim_refuses_a_missing_profile_with_its_path(tmp_path):
    from splitserve.cli import main

    with pytest.raises(SystemExit, match="splitserve sim: cannot read profile .*nope.json"):
        main(["sim", "--profile", str(tmp_path / "nope.json")])
