"""A local stand-in for the Kubernetes API: pods of one namespace, list and watch.

Serves `GET /api/v1/namespaces/NS/pods?labelSelector=...` (PodList) and its
`watch=true` form (newline-delimited WatchEvents from `resourceVersion` on) over real
HTTP, so that the real kubernetes client talks to it unchanged.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class FakePodAPI:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.pods: dict[str, dict] = {}
        self.log: list[tuple[int, str, dict]] = []  # (resourceVersion, type, pod)
        self.version = 100
        self.cond = threading.Condition()
        self.closed = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # chunked watch streams, as the real API server sends

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                api.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # -- test controls ----------------------------------------------------------

    def put_pod(self, name: str, labels: dict[str, str], ip: str | None, ready: bool, annotations: dict | None = None) -> None:
        with self.cond:
            self.version += 1
            kind = "MODIFIED" if name in self.pods else "ADDED"
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": self.namespace,
                    "uid": f"uid-{name}",
                    "labels": labels,
                    "annotations": annotations or {},
                    "resourceVersion": str(self.version),
                },
                "status": {
                    "phase": "Running" if ip else "Pending",
                    "podIP": ip,
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                },
            }
            self.pods[name] = pod
            self.log.append((self.version, kind, pod))
            self.cond.notify_all()

    def delete_pod(self, name: str) -> None:
        with self.cond:
            self.version += 1
            pod = self.pods.pop(name)
            self.log.append((self.version, "DELETED", pod))
            self.cond.notify_all()

    # -- HTTP -------------------------------------------------------------------

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        url = urlparse(req.path)
        if url.path != f"/api/v1/namespaces/{self.namespace}/pods":
            req.send_response(404)
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        selector = dict(part.split("=", 1) for part in query.get("labelSelector", "").split(",") if part)

        def matches(pod: dict) -> bool:
            labels = pod["metadata"]["labels"]
            return all(labels.get(k) == v for k, v in selector.items())

        if query.get("watch") not in ("true", "1"):
            with self.cond:
                items = [p for p in self.pods.values() if matches(p)]
                body = {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": str(self.version)}, "items": items}
            data = json.dumps(body).encode()
            req.send_response(200)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            req.wfile.write(data)
            return
        since = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(query.get("timeoutSeconds", 30))
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Transfer-Encoding", "chunked")
        req.end_headers()

        def chunk(data: bytes) -> None:
            req.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            req.wfile.flush()

        try:
            while True:
                with self.cond:
                    pending = [(v, t, p) for v, t, p in self.log if v > since and matches(p)]
                    if not pending:
                        left = deadline - time.monotonic()
                        if left <= 0 or self.closed:
                            chunk(b"")
                            return
                        self.cond.wait(min(left, 0.1))
                        continue
                for v, kind, pod in pending:
                    chunk(json.dumps({"type": kind, "object": pod}).encode() + b"\n")
                    since = v
        except (BrokenPipeError, ConnectionResetError):
            return
