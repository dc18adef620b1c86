"""The block-key scheme is a cross-component contract: these vectors must never change silently."""

import struct

import pytest
import xxhash

from kvstore.block_key import KVLayout, block_keys, chain_key, root_key, store_key


def test_block_keys_match_fixed_vectors():
    keys = block_keys(list(range(40)), "test-model", 16)
    assert [k.hex() for k in keys] == ["e8c9b9933c97c11577747f40908175f0", "99dce0e79592b2d4312f2f67f9cdd649"]
    assert root_key("test-model").hex() == "19f6afbe558638af188c3c0ff1aa9a4b"
    assert root_key("m", "salt").hex() == "b674b518cb86b9769fe6409426d32a60"
    assert block_keys([1, 2, 3] * 6, "m", 4, "s")[-1].hex() == "311982f34db4aa7fc186d7cac01457b9"


def test_block_keys_follow_the_documented_formula():
    tokens = [7, 70000, -1 & 0x7FFFFFFF, 3] * 8
    parent = xxhash.xxh3_128_digest(b"fp\x00salt")
    expected = []
    for i in range(0, 32, 8):
        parent = xxhash.xxh3_128_digest(parent + struct.pack("<8i", *tokens[i : i + 8]))
        expected.append(parent)
    assert block_keys(tokens, "fp", 8, "salt") == expected


def test_partial_tail_block_has_no_key_and_chains_continue():
    tokens = list(range(37))
    keys = block_keys(tokens, "fp", 16)
    assert len(keys) == 2
    assert block_keys(tokens[32:48] + list(range(11)), "fp", 16, parent=keys[1]) == [
        chain_key(keys[1], tokens[32:37] + list(range(11)))
    ]


def test_salt_and_model_separate_key_spaces():
    tokens = list(range(16))
    assert block_keys(tokens, "ab", 16, "c") != block_keys(tokens, "a", 16, "bc")
    assert block_keys(tokens, "model-a", 16) != block_keys(tokens, "model-b", 16)


def test_invalid_block_size_is_rejected():
    with pytest.raises(ValueError, match="block_size"):
        block_keys([1, 2], "fp", 0)


def test_store_key_names_layout_so_incompatible_layouts_never_mix():
    key = block_keys(list(range(16)), "fp", 16)[0]
    a = store_key(KVLayout("fp", "bfloat16", 16, 0, 2), key)
    b = store_key(KVLayout("fp", "bfloat16", 16, 1, 2), key)
    c = store_key(KVLayout("fp", "float16", 16, 0, 2), key)
    assert len({a, b, c}) == 3 and a.endswith(key.hex())
