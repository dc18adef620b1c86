"""Ranks 1..N-1 as Ray actors in a placement group (``distributed_executor="ray"``).

Rank 0 stays in the calling process; ranks 1..N-1 are actors packed on this node
(STRICT_PACK: the gloo/NCCL rendezvous and the plan channel use 127.0.0.1, so
every rank must share rank 0's host). Tested on CPU (gloo) with a local Ray
cluster (tests/ray/test_ray_ranks.py).

Plan channel: Ray actors are not children of rank 0, so they cannot inherit
multiprocessing pipes. Rank 0 listens on a loopback TCP socket instead; each
actor connects, proves itself with a per-engine token and then reads the same
frames a pipe would carry, through the same ``Connection`` interface
(``run_rank`` does not know the difference). When rank 0 dies the socket closes
and the rank exits on EOF.

Limits, as written: single host only (loopback addresses), and on GPU the
driver's rank 0 takes cuda:0 while Ray hands GPUs to the actors, which may
include that one; a multi-node or GPU-exact placement needs rank 0 to be an
actor too and the node IP in the rendezvous.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

from engine.config import EngineConfig

CONNECT_TIMEOUT_S = 120.0  # actors start a Python worker and import torch first


class RayRank:
    """A rank actor seen through the slice of multiprocessing.Process the executor uses."""

    def __init__(self, ray: Any, actor: Any, ref: Any, placement_group: Any) -> None:
        self._ray, self._actor, self._ref, self._pg = ray, actor, ref, placement_group
        self.pid: int | None = None
        self.exitcode: int | None = None

    def is_alive(self) -> bool:
        done, _ = self._ray.wait([self._ref], timeout=0)
        if done and self.exitcode is None:
            try:
                self._ray.get(self._ref)
                self.exitcode = 0
            except Exception:  # the actor died or raised
                self.exitcode = 1
        return not done

    def join(self, timeout: float | None = None) -> None:
        self._ray.wait([self._ref], timeout=timeout)

    def kill(self) -> None:
        self._ray.kill(self._actor)

    def release(self) -> None:
        """Free the actor's worker process and the placement group (run() returning leaves both held)."""
        self._ray.kill(self._actor)
        with contextlib.suppress(Exception):  # the group is shared by all ranks: the first release removes it
            self._ray.util.remove_placement_group(self._pg)


def _connect_plan_channel(address: tuple[str, int], token: bytes) -> Connection:
    sock = socket.create_connection(address, timeout=30)
    sock.settimeout(None)
    conn = Connection(sock.detach())
    conn.send_bytes(token)
    return conn


def _accept_plan_channels(server: socket.socket, token: bytes, ranks: list[RayRank]) -> list[Connection]:
    """One connection per actor; fails fast if an actor dies before connecting."""
    conns: list[Connection] = []
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    server.settimeout(0.5)
    while len(conns) < len(ranks):
        try:
            sock, _ = server.accept()
        except TimeoutError as exc:
            dead = [r for r, rank in enumerate(ranks, start=1) if not rank.is_alive()]
            if dead:
                raise RuntimeError(f"Ray rank actor(s) {dead} exited before connecting to rank 0") from exc
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Ray rank actors did not connect within {CONNECT_TIMEOUT_S:.0f}s "
                    "(are there enough free CPUs/GPUs on this node for the placement group?)"
                ) from exc
            continue
        sock.settimeout(None)
        conn = Connection(sock.detach())
        if conn.poll(10) and conn.recv_bytes() == token:
            conns.append(conn)
        else:
            conn.close()  # not one of ours
    return conns


def start_ray_ranks(config: EngineConfig, world: int, port: int, eos: set[int]) -> tuple[list[RayRank], list[Connection]]:
    """Start ranks 1..world-1 as actors; returns them and rank 0's plan connection to each."""
    try:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    except ImportError as exc:
        raise ImportError(
            "distributed_executor='ray' needs Ray: pip install 'ray[default]' (or use --distributed-executor mp)"
        ) from exc
    from engine.model_runner import resolve_device
    from engine.rank_worker import run_rank

    if not ray.is_initialized():
        ray.init()
    gpus = 1 if resolve_device(config.device).type == "cuda" else 0
    bundle = {"CPU": 1, "GPU": 1} if gpus else {"CPU": 1}
    pg = placement_group([bundle] * (world - 1), strategy="STRICT_PACK")
    ray.get(pg.ready(), timeout=CONNECT_TIMEOUT_S)

    server = socket.create_server(("127.0.0.1", 0))
    address, token = server.getsockname(), secrets.token_bytes(16)

    @ray.remote(num_gpus=gpus, num_cpus=1)
    class Rank:
        def run(self, rank: int) -> None:
            run_rank(config, rank, world, port, _connect_plan_channel(address, token), eos)

    ranks = []
    try:
        for r in range(1, world):
            strategy = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=r - 1)
            # mypy does not apply class decorators: it misses the ActorClass that @ray.remote made
            actor = Rank.options(scheduling_strategy=strategy).remote()  # type: ignore[attr-defined]
            ranks.append(RayRank(ray, actor, actor.run.remote(r), pg))
        plans = _accept_plan_channels(server, token, ranks)  # any order: every rank gets the same frames
    except BaseException:
        for rank in ranks:
            rank.release()
        with contextlib.suppress(Exception):
            ray.util.remove_placement_group(pg)
        raise
    finally:
        server.close()
    return ranks, plans
