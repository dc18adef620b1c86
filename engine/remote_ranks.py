"""Tensor-parallel ranks on other hosts (``EngineConfig.nnodes > 1``): one engine across pods.

Ranks are laid out node by node: with world W over S nodes, node n holds ranks
n*W/S .. (n+1)*W/S - 1 (one device each, ``cuda:rank % devices``). Node 0 is the
leader: its process is rank 0 (the worker's engine core) and starts its other local
ranks as usual. Every other node runs ``splitserve tp-ranks``, one process per local
rank, which

1. dials the leader's plan channel (``dist_host:dist_port+1``, retrying while the
   leader starts), sends the group token (env ``SPLITSERVE_RANK_TOKEN``, the same secret
   on every node) and its rank;
2. receives the leader's EngineConfig, world size and EOS ids (contracts/rank_plan.py RankSetup; never pickle off
   the network), so that every rank builds exactly the engine rank 0 built;
3. joins torch.distributed at ``tcp://dist_host:dist_port`` (rank 0 hosts the store)
   and runs the ordinary rank loop (engine/rank_worker.py) on the connection.

The leader accepts the remote ranks before it starts its local ones and joins the
group, so local ranks never wait in the rendezvous for pods still being scheduled. A
remote rank is alive while its connection is open (ranks never write to it); it exits
when the leader's connection closes.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import Connection

from contracts.rank_plan import JoinRequest, RankSetup, decode_join, decode_setup, encode
from engine.config import EngineConfig

TOKEN_ENV = "SPLITSERVE_RANK_TOKEN"
JOIN_TIMEOUT_S = 600.0  # remote pods may still be scheduled, pulled and started
RETRY_S = 1.0


class RankGroupError(RuntimeError):
    """The ranks of a multi-node engine could not form their group."""


def group_token() -> bytes:
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise RankGroupError(f"a multi-node engine needs {TOKEN_ENV}: the same secret on every node of the group")
    return token.encode()


def local_ranks(config: EngineConfig, node_rank: int) -> range:
    per_node = config.tensor_parallel_size // config.nnodes
    return range(node_rank * per_node, (node_rank + 1) * per_node)


class RemoteRank:
    """A rank on another host, seen through the slice of multiprocessing.Process the executor uses."""

    def __init__(self, rank: int, conn: Connection, peer: str) -> None:
        self.rank, self.conn, self.pid = rank, conn, f"{rank} at {peer}"
        self.exitcode: int | None = None

    def is_alive(self) -> bool:
        if self.exitcode is None and not self.conn.closed:
            try:
                if self.conn.poll(0):  # ranks never write: readable means closed
                    self.conn.recv_bytes()
            except (EOFError, OSError):
                self.exitcode = -1
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or 0)
        while self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def kill(self) -> None:
        """Close its plan channel: the rank leaves its loop on EOF."""
        self.conn.close()
        self.exitcode = self.exitcode if self.exitcode is not None else -9


def accept_remote_ranks(
    config: EngineConfig, eos: set[int], timeout_s: float = JOIN_TIMEOUT_S
) -> tuple[list[RemoteRank], list[Connection]]:
    """Leader: wait for every rank of nodes 1..nnodes-1; returns them and their plan connections."""
    token = group_token()
    wanted = set(range(config.tensor_parallel_size)) - set(local_ranks(config, 0))
    setup = encode(RankSetup(dataclasses.asdict(config), sorted(eos)))
    joined: dict[int, RemoteRank] = {}
    deadline = time.monotonic() + timeout_s
    with socket.create_server(("0.0.0.0", config.dist_port + 1), reuse_port=False) as server:
        server.settimeout(0.5)
        while len(joined) < len(wanted):
            if time.monotonic() > deadline:
                missing = sorted(wanted - set(joined))
                raise RankGroupError(
                    f"tensor-parallel ranks {missing} did not join within {timeout_s:.0f}s "
                    f"(are the other pods of the group running `splitserve tp-ranks`?)"
                )
            try:
                sock, peer = server.accept()
            except TimeoutError:
                continue
            sock.settimeout(None)
            conn = Connection(sock.detach())
            rank = _admit(conn, token, wanted - set(joined))
            if rank is None:
                conn.close()  # not one of ours, or a duplicate
                continue
            conn.send_bytes(setup)
            joined[rank] = RemoteRank(rank, conn, f"{peer[0]}:{peer[1]}")
    ranks = [joined[r] for r in sorted(joined)]
    return ranks, [r.conn for r in ranks]


def _admit(conn: Connection, token: bytes, open_ranks: set[int]) -> int | None:
    try:
        if not conn.poll(10) or conn.recv_bytes() != token or not conn.poll(10):
            return None
        rank = decode_join(conn.recv_bytes()).rank
    except (EOFError, OSError, ValueError):
        return None
    return rank if rank in open_ranks else None


def join_leader(host: str, port: int, rank: int, timeout_s: float = JOIN_TIMEOUT_S) -> tuple[Connection, EngineConfig, set[int]]:
    """Remote rank: dial the leader's plan channel until it answers; returns it and the leader's engine setup."""
    token = group_token()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sock = socket.create_connection((host, port + 1), timeout=10)
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RankGroupError(
                    f"rank {rank}: leader {host}:{port + 1} did not answer within {timeout_s:.0f}s: {exc}"
                ) from exc
            time.sleep(RETRY_S)
    sock.settimeout(None)
    conn = Connection(sock.detach())
    conn.send_bytes(token)
    conn.send_bytes(encode(JoinRequest(rank)))
    refused = f"rank {rank}: leader {host}:{port + 1} refused it (wrong {TOKEN_ENV}, or rank taken?)"
    try:
        if not conn.poll(30):
            raise RankGroupError(refused)
        setup = decode_setup(conn.recv_bytes())
    except (EOFError, OSError, ValueError) as exc:
        conn.close()
        raise RankGroupError(refused) from exc
    return conn, EngineConfig(**setup.config), set(setup.eos)


def _run_remote_rank(host: str, port: int, rank: int) -> None:
    from engine.rank_worker import run_rank

    conn, config, eos = join_leader(host, port, rank)
    run_rank(config, rank, config.tensor_parallel_size, port, conn, eos)  # returns once its group is shut down
    # Leave without the interpreter's teardown: c10d's C++ threads (the store client, gloo) can still
    # be unwinding then, and their destructors abort the process ("terminate called without an active
    # exception", exit -6) after all its work was done. An error above still exits nonzero.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_node(host: str, port: int, world: int, nnodes: int, node_rank: int) -> int:
    """``splitserve tp-ranks``: run this node's ranks until the leader stops them; returns an exit code."""
    if not 0 < node_rank < nnodes or world % nnodes:
        raise RankGroupError(
            f"node rank {node_rank} of {nnodes} nodes, world {world}: need 0 < node rank < nodes "
            "and a world divisible by the node count (node 0 is the leader worker)"
        )
    per_node = world // nnodes
    # A pod's SIGTERM reaches its group's pods together, but the leader is still draining its
    # requests and needs every rank for that: the ranks stop when the leader closes their channel.
    signal.signal(signal.SIGTERM, lambda *_: print("tp-ranks: SIGTERM ignored; the ranks stop with their leader", flush=True))
    mp = multiprocessing.get_context("spawn")
    procs = [mp.Process(target=_run_remote_rank, args=(host, port, r), name=f"splitserve-rank{r}")
             for r in range(node_rank * per_node, (node_rank + 1) * per_node)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return max((abs(p.exitcode or 0) for p in procs), default=0)
