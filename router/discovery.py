"""Where the workers are: a static list, or Kubernetes pods (router/k8s_discovery.py).

A discovery source emits DiscoveryEvents; the WorkerPool applies them. ``READY`` /
``UNREADY`` follow the platform's readiness (the pod's Ready condition); the pool's
own gRPC health checks decide, on top of that, whether a ready worker is alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from router.workers import Role


class Change(str, Enum):
    ADDED = "added"
    READY = "ready"
    UNREADY = "unready"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class DiscoveryEvent:
    change: Change
    role: Role
    address: str  # gRPC host:port


Emit = Callable[[DiscoveryEvent], None]


class Discovery(Protocol):
    async def run(self, emit: Emit) -> None:
        """Emit the current workers, then follow changes until cancelled."""


class DiscoveryConfigError(ValueError):
    """A --discovery specification that cannot be used."""


@dataclass(slots=True)
class StaticDiscovery:
    prefill: list[str]
    decode: list[str]

    async def run(self, emit: Emit) -> None:
        for role, addresses in ((Role.PREFILL, self.prefill), (Role.DECODE, self.decode)):
            for address in addresses:
                emit(DiscoveryEvent(Change.ADDED, role, address))
                emit(DiscoveryEvent(Change.READY, role, address))
        await asyncio.Event().wait()  # a static list never changes


def parse_discovery_spec(spec: str) -> dict[str, str]:
    """``k8s:namespace=NS,prefill-selector=SEL,decode-selector=SEL`` -> its fields.

    Label selectors may contain commas (``app=x,tier=y``): a comma-separated piece
    without a known ``key=`` prefix continues the previous value.
    """
    kind, _, rest = spec.partition(":")
    if kind != "k8s":
        raise DiscoveryConfigError(f"unknown discovery kind {kind!r}; expected 'k8s:namespace=NS,...'")
    known = ("namespace", "prefill-selector", "decode-selector", "prefill-port", "decode-port", "port-annotation")
    fields: dict[str, str] = {}
    last = ""
    for piece in rest.split(","):
        key, sep, value = piece.partition("=")
        if sep and key in known:
            fields[key] = value
            last = key
        elif last:
            fields[last] += "," + piece
        else:
            raise DiscoveryConfigError(f"cannot parse {piece!r} in discovery spec {spec!r}")
    for required in ("namespace", "prefill-selector", "decode-selector"):
        if required not in fields:
            raise DiscoveryConfigError(f"discovery spec {spec!r} lacks {required}=")
    return fields
