"""Bad requests get precise gRPC status codes whose details name the problem."""

from __future__ import annotations

import grpc
import pytest
import xxhash

from contracts.rpc import kvstore_pb2 as pb
from contracts.rpc import kvstore_pb2_grpc as pb_grpc
from kvstore.client import PutStatus
from kvstore.embedded import EmbeddedStore
from kvstore.errors import InvalidRequest
from kvstore.sync_client import KVStoreClient

CAPACITY = 8 << 20


@pytest.fixture(scope="module")
def store():
    with EmbeddedStore(CAPACITY) as s:
        yield s


@pytest.fixture(scope="module")
def master(store):
    with grpc.insecure_channel(store.address) as channel:
        yield pb_grpc.MasterStub(channel)


def node_stub(store: EmbeddedStore) -> pb_grpc.StorageNodeStub:
    assert store.node is not None, "the embedded store runs its node in process"
    return pb_grpc.StorageNodeStub(grpc.insecure_channel(store.node.address))


def rpc_error(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value


def test_unknown_key_is_not_found_and_named(master):
    err = rpc_error(master.Get, pb.KeysRequest(keys=["no/such/key"]))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "no/such/key" in err.details()
    err = rpc_error(master.Remove, pb.KeysRequest(keys=["no/such/key"]))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_oversized_object_is_resource_exhausted_with_sizes(master, store):
    err = rpc_error(master.PutStart, pb.PutStartItem(key="huge", size=CAPACITY + 1, checksum=1))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(CAPACITY + 1) in err.details() and "exceeds" in err.details()
    with KVStoreClient(store.address) as client:
        result = client.put({"huge": bytes(CAPACITY + 1)})["huge"]
        assert result.status is PutStatus.FAILED and result.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "exceeds the largest node capacity" in str(result.error)
        assert client.exists(["huge"]) == [False]


@pytest.mark.parametrize(
    "call, request_, words",
    [
        ("PutStart", pb.PutStartItem(key="", size=10), "key"),
        ("PutStart", pb.PutStartItem(key="k", size=0), "size"),
        ("BatchGet", pb.KeysRequest(keys=[]), "batch"),
        ("Get", pb.KeysRequest(keys=["a", "b"]), "exactly one"),
        ("BatchPutStart", pb.PutStartRequest(items=[pb.PutStartItem(key="d", size=1)] * 2), "twice"),
        ("PutStart", pb.PutStartItem(key="k", size=10, replicas=5), "replicas"),
        ("PutStart", pb.PutStartItem(key="k", size=10, replicas=0), "replicas"),  # explicit 0 is not "unset"
    ],
)
def test_malformed_requests_are_invalid_argument(master, call, request_, words):
    err = rpc_error(getattr(master, call), request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.details()


def test_corrupted_chunk_is_data_loss_and_the_object_never_appears(master, store):
    data = bytes(range(256)) * 1024  # 256 KiB, 4 chunks of 64 KiB
    started = master.PutStart(pb.PutStartItem(key="corrupt", size=len(data), checksum=xxhash.xxh3_64_intdigest(data)))
    replica = started.replicas[0]

    def chunks(corrupt_index: int | None, bad_checksum: bool = False):
        for i in range(4):
            piece = data[i * 65536 : (i + 1) * 65536]
            digest = xxhash.xxh3_64_intdigest(piece)
            if i == corrupt_index:
                piece = b"\xff" + piece[1:]  # flipped on the wire: no longer matches its digest
            header = (
                dict(offset=replica.offset, size=len(data), checksum=xxhash.xxh3_64_intdigest(data) + bad_checksum)
                if i == 0
                else {}
            )
            yield pb.WriteChunk(data=piece, chunk_checksum=digest, **header)

    node = node_stub(store)
    err = rpc_error(node.Write, chunks(corrupt_index=2))
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert "chunk 2" in err.details() and "checksum" in err.details()
    err = rpc_error(node.Write, chunks(corrupt_index=None, bad_checksum=True))
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert "xxh3_64" in err.details() and "rejected" in err.details()
    master.BatchPutAbort(pb.PutAbortRequest(put_ids=[started.put_id]))
    assert master.Exists(pb.KeysRequest(keys=["corrupt"])).exists == [False]


def test_node_rejects_reads_and_writes_outside_its_segment(store):
    node = node_stub(store)
    err = rpc_error(lambda r: list(node.Read(r)), pb.ReadRequest(offset=CAPACITY - 10, size=100))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside" in err.details()
    reply = node.BatchWrite(pb.BatchWriteRequest(items=[pb.WriteItem(offset=CAPACITY, checksum=0, data=b"x")]))
    assert not reply.results[0].ok and reply.results[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_commit_of_an_unknown_put_is_failed_precondition(master):
    err = rpc_error(master.PutCommit, pb.PutCommitRequest(put_ids=["not-a-put"]))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not-a-put" in err.details()


def test_a_commit_with_checksums_for_only_some_puts_is_refused_and_commits_nothing(master):
    started = master.PutStart(pb.PutStartItem(key="two-checksums", size=16))
    err = rpc_error(master.BatchPutCommit, pb.PutCommitRequest(put_ids=[started.put_id], checksums=[1, 2]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "2 checksums for 1 put ids" in err.details()
    assert master.Exists(pb.KeysRequest(keys=["two-checksums"])).exists == [False]
    master.BatchPutAbort(pb.PutAbortRequest(put_ids=[started.put_id]))


def test_get_into_a_buffer_too_small_is_refused_before_any_copy(store):
    with KVStoreClient(store.address) as client:
        client.put({"sized": b"a" * 1000})
        buf = bytearray(10)
        with pytest.raises(InvalidRequest, match="1000 bytes"):
            client.get_into(["sized"], [buf])
        assert buf == bytearray(10)
