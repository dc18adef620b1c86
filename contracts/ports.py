"""How one process learns the port of another: the one helper for picking a free port.

A server started in this process binds port 0 and reads the port it got (gRPC's
``add_insecure_port`` returns it, ZMQ's ``LAST_ENDPOINT`` names it): no race. A port that a
*child* process must be told before it starts, and must keep when the supervisor restarts
it (``splitserve up``, a rendezvous address), is picked here by binding port 0 and releasing
it; another process may take it in between, so the child fails to bind and says so, and
its supervisor restarts it. Never probe a fixed range.
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on ``host`` now (bind 0, read the port, release it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A free port P with P + 1 free too (KV events on P, their snapshots on P + 1)."""
    for _ in range(100):
        port = free_port(host)
        with socket.socket() as s:
            try:
                s.bind((host, port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free pair of adjacent ports on {host}")
