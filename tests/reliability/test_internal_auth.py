"""Nothing inside a `splitserve up` stack is reachable without the stack's secret: worker
and store gRPC answer UNAUTHENTICATED (health stays open for probes), and the KV-event
streams (CURVE) hand nothing to a client that lacks it. With the secret, all of it works."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contracts import internal_auth
from contracts.rpc import kvstore_pb2 as kv_pb
from contracts.rpc import kvstore_pb2_grpc as kv_grpc
from contracts.rpc import worker_pb2 as pb
from contracts.rpc import worker_pb2_grpc as pb_grpc
from kvstore.event_publisher import request_snapshot

pytestmark = pytest.mark.slow


def _token(stack) -> tuple[str, str]:
    return (internal_auth.METADATA_KEY, open(stack.state["internal_secret_file"]).read().strip())


def _snapshot_endpoint(stack) -> str:
    base, _, port = stack.state["kvstore_events"].rpartition(":")
    return f"{base}:{int(port) + 1}"


def test_worker_grpc_needs_the_stack_token_and_health_stays_open(stack) -> None:
    with grpc.insecure_channel(stack.state["decode"][0]) as channel:
        stub = pb_grpc.DecodeServiceStub(channel)
        for call in (lambda **kw: stub.Abort(pb.AbortRequest(request_id="someone-else"), timeout=5, **kw),
                     lambda **kw: stub.GetLoad(pb.LoadRequest(), timeout=5, **kw)):  # fmt: skip
            with pytest.raises(grpc.RpcError) as denied:
                call()
            assert denied.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert stub.GetLoad(pb.LoadRequest(), timeout=5, metadata=[_token(stack)]).worker_id == "decode-0"
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_the_store_refuses_listing_and_removing_blocks_without_the_token(stack) -> None:
    with grpc.insecure_channel(stack.state["kvstore"]) as channel:
        master = kv_grpc.MasterStub(channel)
        with pytest.raises(grpc.RpcError) as denied:
            master.BatchRemove(kv_pb.KeysRequest(keys=["any"]), timeout=5)
        assert denied.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert len(master.BatchExists(kv_pb.KeysRequest(keys=["any"]), timeout=5, metadata=[_token(stack)]).exists) == 1


def test_kv_events_and_snapshots_need_the_stack_secret(stack, monkeypatch) -> None:
    monkeypatch.delenv(internal_auth.TOKEN_FILE_ENV, raising=False)
    monkeypatch.delenv(internal_auth.TOKEN_ENV, raising=False)
    internal_auth.internal_token.cache_clear()
    try:
        with pytest.raises(TimeoutError):  # the CURVE handshake never completes: no block key leaves
            request_snapshot(_snapshot_endpoint(stack), timeout_s=1.0)
        monkeypatch.setenv(internal_auth.TOKEN_FILE_ENV, stack.state["internal_secret_file"])
        internal_auth.internal_token.cache_clear()
        seq, blocks = request_snapshot(_snapshot_endpoint(stack), timeout_s=5.0)
        assert seq >= 0 and isinstance(blocks, dict)
    finally:
        internal_auth.internal_token.cache_clear()
