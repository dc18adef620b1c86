"""The ``mooncake://`` store URL: where the Mooncake master is and how this client joins.

    mooncake://MASTER_HOST:PORT?metadata=p2p&protocol=tcp&replicas=1&segment=0
    mooncake:///?etcd=ETCD_HOST:2379,ETCD_HOST2:2379&protocol=tcp   (HA masters: the leader is found in etcd)

| query key | meaning | default |
| --- | --- | --- |
| metadata | transfer-engine metadata: ``p2p`` (handshake between peers, no server), ``http://H:P/metadata`` | p2p |
|  | (the master's ``--enable_http_metadata_server``) or ``etcd://H:P`` | |
| protocol | transfer protocol: ``tcp`` or ``rdma`` | tcp |
| device | RDMA device names (``mlx5_0,mlx5_1``); rdma only | "" |
| replicas | copies of each block, on distinct segments | 1 |
| segment | bytes of memory this client adds to the pool (``0``: a pure client; ``mooncake_client`` processes hold the data) | 0 |
| local_buffer | this client's staging buffer for calls that cannot read into the caller's memory | 16MiB |
| host | address peers reach this client at | the local address that routes to the master |
| wait | seconds to keep trying a master that refuses connections (one started beside its workers may still bind) | 10 |
| etcd | etcd endpoints of HA masters (``mooncake_master --enable_ha``), comma-separated; replaces MASTER_HOST:PORT | "" |

A plain ``HOST:PORT`` is not a Mooncake URL: kvstore.backend.open_store reads it as our store.
"""

from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from contracts.sizes import parse_size
from kvstore.errors import InvalidRequest

SCHEME = "mooncake"
PROTOCOLS = ("tcp", "rdma")
_KEYS = {"metadata", "protocol", "device", "replicas", "segment", "local_buffer", "host", "etcd", "wait"}


@dataclass(frozen=True, slots=True)
class MooncakeURL:
    master: str  # HOST:PORT of mooncake_master's RPC service, or etcd://H:P;H:P for HA masters
    metadata: str = "p2p"
    protocol: str = "tcp"
    device: str = ""
    replicas: int = 1
    segment: int = 0
    local_buffer: int = 16 << 20
    host: str = ""  # "" -> local_address_towards(master)
    wait_s: float = 10.0

    @classmethod
    def parse(cls, url: str) -> MooncakeURL:
        """Parse and check a mooncake:// URL; InvalidRequest says what is wrong."""
        parts = urlsplit(url)
        if parts.scheme != SCHEME:
            raise InvalidRequest(f"not a Mooncake store URL: {url!r} (expected mooncake://MASTER_HOST:PORT?...)")
        try:
            port = parts.port
        except ValueError as exc:
            raise InvalidRequest(f"{url!r}: bad master port ({exc})") from exc
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = sorted(set(query) - _KEYS)
        if unknown:
            raise InvalidRequest(f"{url!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}")
        etcd = [e.strip() for e in query.get("etcd", "").split(",") if e.strip()]
        if etcd and parts.hostname:
            raise InvalidRequest(f"{url!r}: give either MASTER_HOST:PORT or etcd=... (HA masters), not both")
        if not etcd and (not parts.hostname or port is None):
            raise InvalidRequest(f"{url!r}: the master must be HOST:PORT, e.g. mooncake://10.0.0.5:50051")
        protocol = query.get("protocol", "tcp").lower()
        if protocol not in PROTOCOLS:
            raise InvalidRequest(f"{url!r}: protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        try:
            replicas = int(query.get("replicas", "1"))
            segment = parse_size(query.get("segment", "0"))
            local_buffer = parse_size(query.get("local_buffer", "16MiB"))
            wait_s = float(query.get("wait", "10"))
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise InvalidRequest(f"{url!r}: {exc}") from exc
        if wait_s < 0:
            raise InvalidRequest(f"{url!r}: wait must be >= 0 seconds, got {wait_s:g}")
        if replicas < 1:
            raise InvalidRequest(f"{url!r}: replicas must be >= 1, got {replicas}")
        if etcd:
            master = "etcd://" + ";".join(etcd)
        else:
            assert parts.hostname is not None
            master = f"{parts.hostname if ':' not in parts.hostname else f'[{parts.hostname}]'}:{port}"
        return cls(
            master=master,
            metadata=query.get("metadata", "p2p") or "p2p",
            protocol=protocol,
            device=query.get("device", ""),
            replicas=replicas,
            segment=segment,
            local_buffer=local_buffer,
            host=query.get("host", ""),
            wait_s=wait_s,
        )

    @property
    def metadata_server(self) -> str:
        """The metadata connection string Mooncake's setup expects."""
        return "P2PHANDSHAKE" if self.metadata.lower() == "p2p" else self.metadata

    def endpoints(self) -> list[str]:
        """HOST:PORT of the master, or of each etcd endpoint for HA masters."""
        return self.master.removeprefix("etcd://").split(";")

    def local_hostname(self) -> str:
        return self.host or local_address_towards(self.endpoints()[0])


def local_address_towards(address: str) -> str:
    """The local IP that routes to ``address`` (HOST:PORT): what a peer there can reach us at."""
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))  # UDP connect sends nothing; it only picks the route
            return s.getsockname()[0]
    except OSError:
        return socket.gethostname()


def is_mooncake_url(address: str) -> bool:
    return address.startswith(SCHEME + "://")
