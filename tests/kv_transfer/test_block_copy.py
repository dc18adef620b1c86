"""Block copies between KV pools move exactly the named blocks, on every path (torch runs, Triton kernel)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from engine import block_copy
from engine.kv_cache import KVCache, KVCacheSpec

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the kernel runs on the GPU, else interpreted
SPEC = KVCacheSpec(num_layers=3, block_size=4, num_kv_heads=2, head_dim=8, dtype=torch.float32)


def pools(n_src: int = 10, n_dst: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    src = torch.randn((3, 2, n_src, 4, 2, 8), generator=gen)
    dst = torch.full((3, 2, n_dst, 4, 2, 8), float("nan"))
    return src, dst


CASES = [([0, 1, 2], [5, 6, 7]), ([3, 1, 8, 9], [0, 11, 2, 3]), ([9], [0]), ([], [])]


@pytest.mark.parametrize("src_ids,dst_ids", CASES)
def test_copy_blocks_moves_exactly_the_named_blocks(src_ids: list[int], dst_ids: list[int]) -> None:
    src, dst = pools()
    block_copy.copy_blocks(src, src_ids, dst, dst_ids)
    for s, d in zip(src_ids, dst_ids):
        assert torch.equal(dst[:, :, d], src[:, :, s])
    untouched = [i for i in range(dst.shape[2]) if i not in dst_ids]
    assert torch.isnan(dst[:, :, untouched]).all()


# (chunk, order, sort): a slab is 64 elements here; chunk 16 makes each program loop over its slab,
# 128 masks past the slab's end; sort launches the pairs in source order
@pytest.mark.parametrize(
    "chunk,order,sort",
    [
        (block_copy.COPY_CHUNK, block_copy.COPY_ORDER, block_copy.COPY_SORTED),
        (16, 1, False),
        (128, 1, False),
        (16, 0, True),
        (4096, 1, True),
    ],
)
@pytest.mark.parametrize("src_ids,dst_ids", CASES[:3])
def test_triton_kernel_equals_the_torch_copy(src_ids: list[int], dst_ids: list[int], chunk: int, order: int, sort: bool) -> None:
    pytest.importorskip("triton", reason="triton is a dev dependency (make setup installs it)")
    src, dst = (t.to(DEVICE) for t in pools())
    block_copy._copy_triton(src, src_ids, dst, dst_ids, chunk=chunk, order=order, sort=sort)
    src, dst = src.cpu(), dst.cpu()
    expected = torch.full_like(dst, float("nan"))
    block_copy.copy_blocks(src, src_ids, expected, dst_ids)
    assert torch.equal(torch.nan_to_num(dst, nan=-1.0), torch.nan_to_num(expected, nan=-1.0))


def test_copy_blocks_rejects_mismatched_id_lists() -> None:
    src, dst = pools()
    with pytest.raises(ValueError, match="2 source blocks but 1 destination"):
        block_copy.copy_blocks(src, [0, 1], dst, [0])


def test_kv_cache_copies_from_a_peer_pool_of_the_same_layout() -> None:
    peer, mine = KVCache(SPEC, 6, torch.device("cpu")), KVCache(SPEC, 8, torch.device("cpu"))
    peer.pool.normal_()
    mine.copy_blocks_from(peer.pool, [4, 5], [0, 7])
    assert torch.equal(mine.gather([0, 7]), peer.gather([4, 5]))
    other = KVCache(KVCacheSpec(3, 4, 1, 8, torch.float32), 6, torch.device("cpu"))
    with pytest.raises(ValueError, match="does not match"):
        mine.copy_blocks_from(other.pool, [0], [0])


def test_file_backed_pool_is_visible_to_a_second_mapping(tmp_path) -> None:
    path = str(tmp_path / "pool")
    a = KVCache(SPEC, 4, torch.device("cpu"), shared_file=path)
    b = KVCache(SPEC, 4, torch.device("cpu"), shared_file=path)
    a.k[1][2].fill_(7.0)
    assert torch.equal(b.k[1][2], torch.full_like(b.k[1][2], 7.0))
    rows = torch.randn(2, 3, 2, 4, 2, 8)
    a.scatter([0, 3], rows)
    assert torch.equal(b.gather([0, 3]), rows)


def test_a_launch_sized_for_more_pairs_copies_only_the_counted_ones() -> None:
    """The captured copy's kernel: ids for 4 pairs on the device, count says 2: only those 2 land."""
    pytest.importorskip("triton", reason="triton is a dev dependency (make setup installs it)")
    src, dst = (t.to(DEVICE) for t in pools())
    ids = torch.tensor([[3, 1, 8, 9], [0, 11, 2, 3]], dtype=torch.int64, device=DEVICE)
    count = torch.tensor([2], dtype=torch.int64, device=DEVICE)
    block_copy._launch(src, dst, ids, 4, block_copy.COPY_CHUNK, block_copy.COPY_WARPS, block_copy.COPY_ORDER, count)
    src, dst = src.cpu(), dst.cpu()
    assert torch.equal(dst[:, :, 0], src[:, :, 3]) and torch.equal(dst[:, :, 11], src[:, :, 1])
    assert torch.isnan(dst[:, :, [2, 3]]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_captured_copies_of_any_size_move_exactly_the_named_blocks() -> None:
    src, dst = (t.cuda() for t in pools(40, 40))
    gen = torch.Generator().manual_seed(1)
    for n in (1, 3, 16, 17, 9, 30, 2):  # capacities 16 and 32, each reused with fewer pairs than before
        perm_src, perm_dst = torch.randperm(40, generator=gen)[:n].tolist(), torch.randperm(40, generator=gen)[:n].tolist()
        dst.fill_(float("nan"))
        block_copy.copy_blocks(src, perm_src, dst, perm_dst)
        torch.cuda.synchronize()
        for s, d in zip(perm_src, perm_dst):
            assert torch.equal(dst[:, :, d], src[:, :, s])
        untouched = [i for i in range(40) if i not in perm_dst]
        assert torch.isnan(dst[:, :, untouched]).all()
    assert any(g is not None for g in block_copy._graphs.values()), "no copy was captured"
