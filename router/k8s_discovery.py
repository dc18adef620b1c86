"""Kubernetes discovery: list + watch the worker pods of each role by label selector.

A pod is a worker at ``podIP:port`` (port from the pod annotation
``splitserve.io/grpc-port`` or the role's default) and is ready when its Ready
condition is True. The watch resumes from the list's resourceVersion; when it ends or
fails (e.g. 410 Gone) the loop lists again and diffs against what it knew, so no
change is lost. The kubernetes client is synchronous: each role runs in a thread and
hands its events to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from router.discovery import Change, DiscoveryEvent, Emit
from router.workers import Role

log = logging.getLogger(__name__)

PORT_ANNOTATION = "splitserve.io/grpc-port"
DEFAULT_PORTS = {Role.PREFILL: 50071, Role.DECODE: 50081}


@dataclass(slots=True)
class _PodState:
    address: str
    ready: bool


@dataclass(slots=True)
class KubernetesDiscovery:
    namespace: str
    selectors: dict[Role, str]
    ports: dict[Role, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    port_annotation: str = PORT_ANNOTATION
    api_client: Any = None  # kubernetes.client.ApiClient; None: in-cluster or kubeconfig
    watch_timeout_s: int = 30
    retry_interval_s: float = 1.0
    _stop: threading.Event = field(default_factory=threading.Event)

    async def run(self, emit: Emit) -> None:
        loop = asyncio.get_running_loop()

        def emit_threadsafe(event: DiscoveryEvent) -> None:
            loop.call_soon_threadsafe(emit, event)

        api = self._core_api()
        threads = [
            threading.Thread(
                target=self._follow, args=(api, role, selector, emit_threadsafe), daemon=True, name=f"k8s-{role.value}"
            )
            for role, selector in self.selectors.items()
        ]
        for t in threads:
            t.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()  # threads leave at their next event or watch timeout

    def _core_api(self) -> Any:
        from kubernetes import client, config

        if self.api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            return client.CoreV1Api()
        return client.CoreV1Api(self.api_client)

    def _follow(self, api: Any, role: Role, selector: str, emit: Emit) -> None:
        from kubernetes import watch

        known: dict[str, _PodState] = {}
        while not self._stop.is_set():
            try:
                pods = api.list_namespaced_pod(self.namespace, label_selector=selector)
                self._resync(role, known, pods.items, emit)
                version = pods.metadata.resource_version
                w = watch.Watch()
                for event in w.stream(
                    api.list_namespaced_pod,
                    self.namespace,
                    label_selector=selector,
                    resource_version=version,
                    timeout_seconds=self.watch_timeout_s,
                ):
                    if self._stop.is_set():
                        w.stop()
                        return
                    if event["type"] == "ERROR":
                        break  # e.g. resourceVersion too old: list again
                    pod = event["object"]
                    if event["type"] == "DELETED":
                        self._forget(role, known, pod.metadata.uid, emit)
                    else:
                        self._observe(role, known, pod, emit)
            except Exception as exc:  # the API server may be unreachable or restarting
                log.warning("kubernetes discovery for %s pods failed: %s; retrying", role.value, exc)
                self._stop.wait(self.retry_interval_s)

    def _resync(self, role: Role, known: dict[str, _PodState], pods: list[Any], emit: Emit) -> None:
        seen = {pod.metadata.uid for pod in pods}
        for uid in [uid for uid in known if uid not in seen]:
            self._forget(role, known, uid, emit)
        for pod in pods:
            self._observe(role, known, pod, emit)

    def _observe(self, role: Role, known: dict[str, _PodState], pod: Any, emit: Emit) -> None:
        uid = pod.metadata.uid
        address = self._address(role, pod)
        if address is None or pod.metadata.deletion_timestamp is not None:
            self._forget(role, known, uid, emit)
            return
        ready = _is_ready(pod)
        old = known.get(uid)
        if old is not None and old.address != address:
            self._forget(role, known, uid, emit)
            old = None
        if old is None:
            known[uid] = _PodState(address, False)
            emit(DiscoveryEvent(Change.ADDED, role, address))
            old = known[uid]
        if ready != old.ready:
            old.ready = ready
            emit(DiscoveryEvent(Change.READY if ready else Change.UNREADY, role, address))

    @staticmethod
    def _forget(role: Role, known: dict[str, _PodState], uid: str, emit: Emit) -> None:
        state = known.pop(uid, None)
        if state is not None:
            emit(DiscoveryEvent(Change.REMOVED, role, state.address))

    def _address(self, role: Role, pod: Any) -> str | None:
        ip = pod.status.pod_ip if pod.status else None
        if not ip:
            return None
        annotations = pod.metadata.annotations or {}
        port = int(annotations.get(self.port_annotation, self.ports[role]))
        host = f"[{ip}]" if ":" in ip else ip
        return f"{host}:{port}"


def _is_ready(pod: Any) -> bool:
    conditions = (pod.status.conditions if pod.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)
