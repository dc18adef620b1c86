"""ASGI middleware: refuse request bodies over a size limit (413) or slower than a deadline (408).

The whole body must arrive within ``body_timeout_s`` of the request's start: a client
that trickles bytes (or sends none) cannot hold a connection and a task forever.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        # Chunked bodies: read up to the limit before the app sees anything.
        messages: list[Message] = []
        size = 0
        try:
            # one timeout over the whole body (no task per receive, as asyncio.wait_for would cost)
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    messages.append(message)
                    size += len(message.get("body", b""))
                    if size > self.max_bytes:
                        break
                    if message["type"] != "http.request" or not message.get("more_body"):
                        break
        except TimeoutError:
            await self._send_error(send, 408, f"the request body did not arrive within {self.body_timeout_s:g} s",
                                   "request_timeout")  # fmt: skip
            return
        if size > self.max_bytes:
            await self._reject(send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        await self._send_error(send, 413, f"request body exceeds the limit of {self.max_bytes} bytes", "request_too_large")

    @staticmethod
    async def _send_error(send: Send, status: int, message: str, code: str) -> None:
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                     "code": code}}).encode()  # fmt: skip
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 408:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
