"""The store calls the workers make (kvstore.backend) mean the same on our store and on Mooncake.

Real processes on 127.0.0.1 for both: our master + storage nodes, and mooncake_master +
mooncake_client memory nodes from the mooncake wheel.
"""

from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from store_backends import BackendCluster, start_backend

from kvstore.backend import BACKENDS, open_store, store_address
from kvstore.block_key import KVLayout, block_keys
from kvstore.client import PutStatus
from kvstore.errors import InvalidRequest, NoStorageNodes

pytestmark = pytest.mark.slow

LAYOUT = KVLayout("llama-test", "float32", 16)
ROW = (2, 2, 16, 2, 8)  # [L, 2, B, Hkv, D]: one block, all layers -> 4 KiB in float32
_prompt = itertools.count()


BIG_ROW = (2, 2, 16, 8, 64)  # 128 KiB


def new_blocks(n: int, row: tuple[int, ...] = ROW) -> tuple[list[bytes], torch.Tensor]:
    """Keys of a fresh n-block prompt and its rows [n, L, 2, B, Hkv, D]."""
    start = next(_prompt) * 100_000
    keys = block_keys(list(range(start, start + 16 * n)), LAYOUT.model_fingerprint)
    return keys, torch.randn(n, *row)


def put_all(store, keys: list[bytes], rows: torch.Tensor) -> dict:
    return store.put_blocks(LAYOUT, {k: rows[i] for i, k in enumerate(keys)})


def test_blocks_read_back_into_the_callers_rows_are_the_ones_written(backend_cluster: BackendCluster):
    store = open_store(backend_cluster.address)
    try:
        keys, rows = new_blocks(8)
        assert all(r.status is PutStatus.STORED for r in put_all(store, keys, rows).values())
        assert store.blocks_exist(LAYOUT, keys) == [True] * 8

        out = torch.full_like(rows, -1.0)
        assert store.get_blocks_into(LAYOUT, keys, [out[i] for i in range(8)]) == [True] * 8
        assert torch.equal(out, rows)
    finally:
        store.close()


def test_a_missing_block_reads_as_a_miss_and_leaves_its_row_untouched(backend_cluster: BackendCluster):
    with open_store(backend_cluster.address) as store:
        keys, rows = new_blocks(3)
        put_all(store, keys[:2], rows[:2])
        out = torch.full_like(rows, -1.0)
        assert store.get_blocks_into(LAYOUT, keys, [out[i] for i in range(3)]) == [True, True, False]
        assert torch.equal(out[:2], rows[:2]) and bool((out[2] == -1.0).all())
        assert store.blocks_exist(LAYOUT, keys) == [True, True, False]


def test_the_same_key_under_another_layout_is_another_block(backend_cluster: BackendCluster):
    with open_store(backend_cluster.address) as store:
        keys, rows = new_blocks(1)
        put_all(store, keys, rows)
        other_rank = KVLayout(LAYOUT.model_fingerprint, LAYOUT.dtype, LAYOUT.block_size, tp_rank=1, tp_size=2)
        assert store.blocks_exist(other_rank, keys) == [False]


def test_writing_a_block_again_succeeds_and_keeps_the_first_content(backend_cluster: BackendCluster):
    with open_store(backend_cluster.address) as store:
        keys, rows = new_blocks(2)
        put_all(store, keys, rows)
        again = put_all(store, keys, torch.zeros_like(rows))  # content-addressed: same key, same content in practice
        assert all(r.ok for r in again.values())
        out = torch.empty_like(rows)
        assert store.get_blocks_into(LAYOUT, keys, [out[0], out[1]]) == [True, True]
        assert torch.equal(out, rows)


def test_transfer_threads_share_one_client_and_each_gets_its_own_blocks(backend_cluster: BackendCluster):
    """What the worker does: one client, a pool of transfer threads writing and reading at once."""
    with open_store(backend_cluster.address) as store:

        def request(_: int) -> bool:
            keys, rows = new_blocks(6)
            if not all(r.ok for r in put_all(store, keys, rows).values()):
                return False
            out = torch.empty_like(rows)
            return all(store.get_blocks_into(LAYOUT, keys, [out[i] for i in range(6)])) and torch.equal(out, rows)

        with ThreadPoolExecutor(4) as pool:
            assert all(pool.map(request, range(24)))


def test_a_buffer_smaller_than_the_block_is_a_clear_error(backend_cluster: BackendCluster):
    with open_store(backend_cluster.address) as store:
        keys, rows = new_blocks(1)
        put_all(store, keys, rows)
        with pytest.raises(InvalidRequest, match="buffer"):
            store.get_blocks_into(LAYOUT, keys, [torch.empty(10)])
        with pytest.raises(InvalidRequest, match="2 keys but 1 buffers"):
            store.get_blocks_into(LAYOUT, keys * 2, [torch.empty_like(rows[0])])


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocks_pushed_out_by_newer_ones_become_misses_never_other_bytes(backend: str):
    cluster = start_backend(backend, n_nodes=1, node_bytes=16 << 20)  # Mooncake's smallest segment
    try:
        with open_store(cluster.address) as store:
            written: list[tuple[list[bytes], torch.Tensor]] = []
            for round_ in range(64):  # 2 MiB a round into 16 MiB of memory, until the oldest blocks go
                keys, rows = new_blocks(16, BIG_ROW)
                results = put_all(store, keys, rows)
                written.append(([k for k in keys if results[k].ok], rows[[i for i, k in enumerate(keys) if results[k].ok]]))
                if round_ >= 8 and not all(store.blocks_exist(LAYOUT, written[0][0])):
                    break
                time.sleep(0.05)  # Mooncake evicts in the background (a full store refuses puts meanwhile)
            found = misses = 0
            for keys, rows in written:
                out = torch.full_like(rows, -1.0)
                got = store.get_blocks_into(LAYOUT, keys, [out[i] for i in range(len(keys))])
                for i, ok in enumerate(got):
                    if ok:
                        assert torch.equal(out[i], rows[i]), "an evicted block came back with other bytes"
                        found += 1
                    else:
                        assert bool((out[i] == -1.0).all())
                        misses += 1
            assert misses > 0, "nothing was evicted: the test did not fill the store"
            assert found > 0
    finally:
        cluster.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lost_node_turns_its_blocks_into_misses_and_the_rest_keeps_serving(backend: str):
    cluster = start_backend(backend, n_nodes=2)
    try:
        with open_store(cluster.address) as store:
            keys, rows = new_blocks(64)
            assert all(r.ok for r in put_all(store, keys, rows).values())
            cluster.kill_node(0)

            out = torch.full_like(rows, -1.0)  # before the master notices: each block is right or a miss
            got = store.get_blocks_into(LAYOUT, keys, [out[i] for i in range(64)])
            assert all(torch.equal(out[i], rows[i]) for i, ok in enumerate(got) if ok)

            cluster.wait_until_node_dropped(1)
            deadline = time.monotonic() + 15  # the master forgets the lost node's blocks once it drops it
            while (left := store.blocks_exist(LAYOUT, keys)).count(True) == 64 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert 0 < left.count(True) < 64, "blocks should have been spread over both nodes, half of them lost"
            out = torch.full_like(rows, -1.0)
            assert store.get_blocks_into(LAYOUT, keys, [out[i] for i in range(64)]) == left
            assert all(torch.equal(out[i], rows[i]) for i, ok in enumerate(left) if ok)
            more_keys, more_rows = new_blocks(16)
            assert all(r.ok for r in put_all(store, more_keys, more_rows).values())
            out = torch.empty_like(more_rows)
            assert store.get_blocks_into(LAYOUT, more_keys, [out[i] for i in range(16)]) == [True] * 16
            assert torch.equal(out, more_rows)
    finally:
        cluster.stop()


def test_the_backend_flag_and_the_address_choose_the_store():
    assert store_address("ours", "10.0.0.5:50051") == "10.0.0.5:50051"
    assert store_address("mooncake", "10.0.0.5:50051") == "mooncake://10.0.0.5:50051"
    assert store_address("mooncake", "mooncake://m:1?protocol=rdma") == "mooncake://m:1?protocol=rdma"
    with pytest.raises(InvalidRequest, match="ours but --kvstore is a Mooncake URL"):
        store_address("ours", "mooncake://m:1")
    with pytest.raises(InvalidRequest, match="must be one of ours, mooncake"):
        store_address("redis", "m:1")
    with pytest.raises(InvalidRequest, match="unknown option"):
        open_store("mooncake://m:1?protcol=tcp")
    with pytest.raises(NoStorageNodes, match="cannot reach the Mooncake master"):
        open_store("mooncake://127.0.0.1:1?wait=0.3")


@pytest.mark.parametrize("backend", BACKENDS)
def test_with_two_replicas_a_lost_node_costs_no_block(backend: str):
    cluster = start_backend(backend, n_nodes=2)
    try:
        replicated = (
            open_store(cluster.address + "&replicas=2") if backend == "mooncake" else open_store(cluster.address, replicas=2)
        )
        with replicated as store:
            keys, rows = new_blocks(32)
            assert all(r.ok for r in put_all(store, keys, rows).values())
            cluster.kill_node(0)
            cluster.wait_until_node_dropped(1)
            # Mooncake reads one replica per get: until its master expires the lost node, a get
            # that picks the dead copy is a miss. Ours falls back to the next replica at once.
            out = torch.empty_like(rows)
            deadline = time.monotonic() + 15
            while (
                not all(got := store.get_blocks_into(LAYOUT, keys, [out[i] for i in range(32)])) and time.monotonic() < deadline
            ):
                time.sleep(0.2)
            assert got == [True] * 32
            assert torch.equal(out, rows)
    finally:
        cluster.stop()
