"""Worker health checks against real gRPC servers with the standard health service."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from contracts.rpc import worker_pb2, worker_pb2_grpc
from router.discovery import Change, DiscoveryEvent
from router.worker_pool import WorkerPool
from router.workers import Role


class LoadReporter(worker_pb2_grpc.DecodeServiceServicer):
    async def GetLoad(self, request, context):
        return worker_pb2.WorkerLoad(worker_id="decode-7", role="decode", running_requests=3, model_fingerprint="fp")


async def start_worker(port: int = 0) -> tuple[grpc.aio.Server, health.HealthServicer, str]:
    server = grpc.aio.server()
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    worker_pb2_grpc.add_DecodeServiceServicer_to_server(LoadReporter(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer, f"127.0.0.1:{bound}"


async def test_a_dead_worker_leaves_the_pool_and_comes_back_when_healthy():
    server, servicer, address = await start_worker()
    pool = WorkerPool(interval_s=0.05, check_timeout_s=0.3, fail_threshold=2)
    pool.apply(DiscoveryEvent(Change.ADDED, Role.DECODE, address))
    assert pool.ready_count(Role.DECODE) == 0  # not ready until discovery says so
    pool.apply(DiscoveryEvent(Change.READY, Role.DECODE, address))
    await pool.check_all()
    assert pool.ready_count(Role.DECODE) == 1
    worker = pool.workers[address]
    assert (worker.worker_id, worker.load.running_requests, pool.model_fingerprint()) == ("decode-7", 3, "fp")

    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # draining: it says so
    await pool.check_all()
    assert pool.ready_count(Role.DECODE) == 0  # out at the first answer, not after fail_threshold
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await pool.check_all()
    assert pool.ready_count(Role.DECODE) == 1

    port = int(address.rsplit(":", 1)[1])
    await server.stop(None)  # killed
    await pool.check_all()
    assert pool.ready_count(Role.DECODE) == 1  # one unanswered check is tolerated (a blip)
    await pool.check_all()
    assert pool.ready_count(Role.DECODE) == 0
    server, servicer, _ = await start_worker(port)  # restarted on the same address
    try:
        for _ in range(50):  # within ~5 s, whatever the channel's reconnect back-off
            await pool.check_all()
            if pool.ready_count(Role.DECODE):
                break
            await asyncio.sleep(0.1)
        assert pool.ready_count(Role.DECODE) == 1
        pool.apply(DiscoveryEvent(Change.REMOVED, Role.DECODE, address))
        assert pool.workers == {}
    finally:
        await pool.close()
        await server.stop(None)


async def test_a_workers_stub_is_reused_and_dropped_when_the_worker_leaves():
    pool = WorkerPool()
    pool.apply(DiscoveryEvent(Change.ADDED, Role.DECODE, "127.0.0.1:1"))
    stub = pool.stub("127.0.0.1:1", worker_pb2_grpc.DecodeServiceStub)
    assert pool.stub("127.0.0.1:1", worker_pb2_grpc.DecodeServiceStub) is stub
    pool.apply(DiscoveryEvent(Change.REMOVED, Role.DECODE, "127.0.0.1:1"))
    pool.apply(DiscoveryEvent(Change.ADDED, Role.DECODE, "127.0.0.1:1"))
    assert pool.stub("127.0.0.1:1", worker_pb2_grpc.DecodeServiceStub) is not stub  # a new channel, a new stub
    await pool.close()
