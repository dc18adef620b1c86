"""contracts/internal_auth.py: a gRPC server with TokenCheck serves callers that send the
token, on unary and streaming calls alike, and refuses everyone else (health excepted)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from contracts.internal_auth import TokenCheck, _StreamStream, _StreamUnary, _UnaryStream, _UnaryUnary
from contracts.rpc import worker_pb2 as pb
from contracts.rpc import worker_pb2_grpc as pb_grpc


class Decode(pb_grpc.DecodeServiceServicer):
    async def Generate(self, request, context):
        yield pb.GenerateChunk(token_ids=[1], finish_reason="length")

    async def Abort(self, request, context):
        return pb.AbortResponse(found=True)


@pytest.fixture
async def address():
    server = grpc.aio.server(interceptors=[TokenCheck("s3cret")])
    pb_grpc.add_DecodeServiceServicer_to_server(Decode(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


def _channel(address: str, token: str | None) -> grpc.aio.Channel:
    kinds = (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    return grpc.aio.insecure_channel(address, interceptors=[k(token) for k in kinds] if token else None)


async def test_unary_and_streaming_calls_pass_with_the_token(address) -> None:
    async with _channel(address, "s3cret") as channel:
        stub = pb_grpc.DecodeServiceStub(channel)
        assert (await stub.Abort(pb.AbortRequest(request_id="r"))).found
        assert [list(c.token_ids) async for c in stub.Generate(pb.GenerateRequest())] == [[1]]


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_calls_without_the_right_token_are_unauthenticated(address, token) -> None:
    async with _channel(address, token) as channel:
        stub = pb_grpc.DecodeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.Abort(pb.AbortRequest(request_id="r"))
        with pytest.raises(grpc.aio.AioRpcError) as stream:
            _ = [c async for c in stub.Generate(pb.GenerateRequest())]
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert unary.value.code() is stream.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reply.status == health_pb2.HealthCheckResponse.SERVING  # probes carry no token
