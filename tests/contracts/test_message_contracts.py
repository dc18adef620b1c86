"""The messages between processes (contracts/): every one round-trips, and a shape changed on one side fails.

Both sides of each boundary import one definition, so within one build a message cannot
disagree with itself. What can still happen is two builds talking (a rolling upgrade, a
worker image older than the router): ``message_schemas.json`` pins every shape, so any
change to a message fails here until the snapshot is updated on purpose
(``SPLITSERVE_UPDATE_SCHEMAS=1 pytest tests/contracts``), and the decoders refuse a
message of another shape instead of shifting its fields.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgpack
import msgspec
import pytest

from contracts import core_messages as ec
from contracts import kv_events as ev
from contracts import rank_plan as rp
from contracts.kv_handle import DirectOffer, KVHandle, PeerPair, PeerPull, PeerRefused, PeerRows, PoolDescriptor, Release
from contracts.sampling import SamplingParams

SCHEMAS = Path(__file__).with_name("message_schemas.json")
KEY = b"k" * 16

HANDLE = KVHandle(
    "fp",
    "float32",
    16,
    1,
    [KEY],
    b"",
    16,
    ["store:1"],
    "prefill-0",
    True,
    "t1",
    "e1",
    DirectOffer(b"pool", [3], "ipc:///tmp/x", 12.5),
)
LOAD = ec.EngineLoad(1, 2, 0, 0.25, 30, 4, 16, 16, 100, 40)
PARAMS = SamplingParams(temperature=0.0, seed=3, stop=["\n"], logprobs=2, logit_bias=[(5, -1.0)])

TO_CORE = [
    ec.AddRequest("r1", [1, 2, 3], PARAMS, "salt", prefill_only=True),
    ec.ImportRequest("r2", [1, 2, 3], SamplingParams(), "", HANDLE, 7, 10.0),
    ec.Abort("r1"),
    ec.LoadQuery(4),
    ec.Shutdown(),
]
FROM_CORE = [
    ec.Ready(ec.CoreInfo("w", "fp", "float32", 16, 1, 100, "tcp://h:1", "tcp://h:2")),
    ec.StepOutputs(
        [
            ec.RequestDelta("r1", [9], [ec.TokenLogprob(9, -0.5, [(9, -0.5), (2, -1.0)])], True, "stop", 0, 3, 1),
            ec.RequestDelta("r2", [4], None, False, None, 16, 16, 2),
        ],
        0.01,
        2,
    ),
    ec.Prefilled("r1", ec.PrefillResult(9, None, HANDLE, 0, 3, None)),
    ec.RequestError("r1", ec.ErrorKind.NOT_FOUND, "blocks evicted"),
    ec.LoadReport(4, LOAD),
    ec.Queued(0.5),
    ec.Transfer("store", "in", 1 << 20, 0.002),
]
PLANS = [
    rp.StepPlan(
        max_q_len=3,
        num_seqs=1,
        input_ids=b"\0" * 24,
        positions=b"\0" * 24,
        slot_mapping=b"\0" * 24,
        cu_seqlens_q=b"\0" * 16,
        seq_lens=b"\0" * 8,
        block_tables=b"\0" * 8,
        logits_indices=b"\0" * 8,
    ),
    rp.ExportBlocks([1, 2]),
    rp.ImportBlocks([3]),
    rp.Stop(),
]
EVENTS: list[ev.KVEvent] = [
    ev.BlockStored(keys=[KEY], parent=None, token_ids=[1, 2], block_size=16, medium="gpu"),
    ev.BlockRemoved(keys=[KEY], medium="store"),
    ev.AllBlocksCleared(),
]


def all_shapes() -> dict:
    """JSON schema of every message union and record that crosses a process boundary."""
    types = [
        ec.ToCore,
        ec.FromCore,
        rp.RankPlan,
        rp.JoinRequest,
        rp.RankSetup,
        ev.KVEvent,
        ev.Snapshot,
        PoolDescriptor,
        Release,
        PeerPair | PeerPull,
        PeerRows | PeerRefused,
    ]
    _, components = msgspec.json.schema_components(types)
    return components


@pytest.mark.parametrize("msg", TO_CORE, ids=lambda m: type(m).__name__)
def test_every_server_to_core_message_round_trips(msg) -> None:
    assert ec.decode_to_core(ec.encode(msg)) == msg


@pytest.mark.parametrize("msg", FROM_CORE, ids=lambda m: type(m).__name__)
def test_every_core_to_server_message_round_trips(msg) -> None:
    assert ec.decode_from_core(ec.encode(msg)) == msg


@pytest.mark.parametrize("plan", PLANS, ids=lambda m: type(m).__name__)
def test_every_rank_plan_round_trips(plan) -> None:
    assert rp.decode_plan(rp.encode(plan)) == plan


def test_rank_setup_and_join_round_trip() -> None:
    setup = rp.RankSetup({"model": "/m", "block_size": 16}, [2])
    assert rp.decode_setup(rp.encode(setup)) == setup
    assert rp.decode_join(rp.encode(rp.JoinRequest(3))).rank == 3


def test_kv_events_keep_vllms_wire_format() -> None:
    frames = ev.encode_batch("w1", 7, EVENTS, timestamp=1.5)
    expected = [
        1.5,
        [["BlockStored", [KEY], None, [1, 2], 16, None, "gpu"], ["BlockRemoved", [KEY], "store"], ["AllBlocksCleared"]],
    ]
    assert msgpack.unpackb(frames[2], raw=False) == expected
    assert ev.decode_batch(frames).events == EVENTS


def test_a_message_with_a_field_added_on_one_side_is_refused() -> None:
    newer = msgpack.packb(["abort", "r1", "a field this build does not know"])
    with pytest.raises(msgspec.ValidationError):
        ec.decode_to_core(newer)


def test_a_message_with_a_field_missing_on_one_side_is_refused() -> None:
    older = msgpack.packb(["transfer", "store", "in", 1024])  # no seconds
    with pytest.raises(msgspec.ValidationError):
        ec.decode_from_core(older)


def test_a_field_of_the_wrong_type_is_refused_not_shifted() -> None:
    shifted = msgpack.packb(["queued", "r1"])  # a request id where seconds belong
    with pytest.raises(msgspec.ValidationError, match="float"):
        ec.decode_from_core(shifted)


def test_message_shapes_match_the_pinned_snapshot() -> None:
    shapes = all_shapes()
    if os.environ.get("SPLITSERVE_UPDATE_SCHEMAS") == "1":
        SCHEMAS.write_text(json.dumps(shapes, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(SCHEMAS.read_text())
    changed = sorted(name for name in shapes.keys() | pinned.keys() if shapes.get(name) != pinned.get(name))
    assert not changed, (
        f"message shapes changed: {changed}. Processes of two builds would not understand each other; if "
        "that is intended, update the snapshot: SPLITSERVE_UPDATE_SCHEMAS=1 pytest tests/contracts"
    )
