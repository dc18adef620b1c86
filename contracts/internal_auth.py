"""Authentication on the internal surfaces: worker and store gRPC, KV-event ZMQ streams.

One shared secret per deployment (``splitserve up`` makes a random one per stack; the
chart mounts one from a Secret). It is read from the file named by
``$SPLITSERVE_INTERNAL_SECRET_FILE`` or from ``$SPLITSERVE_INTERNAL_SECRET``, never from
the command line (visible in ``ps``). Without either, auth is off (tests, a laptop).

- gRPC: every call carries ``x-splitserve-token`` (client interceptors on every channel);
  every server checks it in constant time (``TokenCheck``) and answers UNAUTHENTICATED
  otherwise. The standard health service stays open: probes (kubelet, `up`) carry no
  token and health reveals nothing.
- ZMQ (KV events and their snapshots, which carry every tenant's token ids): CURVE,
  i.e. encrypted and authenticated. The publisher's key pair is derived from the secret,
  so only a holder of the secret knows the server key a subscriber must present to
  complete the handshake; subscribers use throw-away key pairs. CURVE rather than HMAC
  frames because the events are confidential, not only to be protected from forgery.

The token travels in clear inside plaintext gRPC: it keeps out whoever can reach a port
but cannot read the traffic; on an untrusted network add mTLS (a mesh, or TLS on the
gRPC ports) as well.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

METADATA_KEY = "x-splitserve-token"
TOKEN_FILE_ENV = "SPLITSERVE_INTERNAL_SECRET_FILE"
TOKEN_ENV = "SPLITSERVE_INTERNAL_SECRET"
OPEN_METHODS = ("/grpc.health.v1.Health/",)


class TokenFileError(RuntimeError):
    """The internal token file is missing or empty."""


@functools.cache
def internal_token() -> str | None:
    """The deployment's internal secret, or None when auth is off (read once per process)."""
    path = os.environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            token = open(path).read().strip()
        except OSError as exc:
            raise TokenFileError(f"cannot read the internal token file ${TOKEN_FILE_ENV}={path}: {exc}") from exc
        if not token:
            raise TokenFileError(f"the internal token file ${TOKEN_FILE_ENV}={path} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


# ---- gRPC servers -----------------------------------------------------------------------------------
class TokenCheck(grpc.aio.ServerInterceptor):
    """Refuse calls without the deployment's token (UNAUTHENTICATED); health stays open."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:  # fmt: skip
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS) or self._valid(details.invocation_metadata):
            return handler

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"missing or wrong internal token ({METADATA_KEY}); see docs/reliability.md")  # fmt: skip

        make = {
            (False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler,
        }[(handler.request_streaming, handler.response_streaming)]  # fmt: skip
        return make(deny, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)  # fmt: skip

    def _valid(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == METADATA_KEY:
                sent = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(sent, self._expected)
        return False


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """Pass as ``grpc.aio.server(interceptors=...)`` on every internal gRPC server."""
    token = internal_token()
    return [TokenCheck(token)] if token else []


# ---- gRPC clients -----------------------------------------------------------------------------------
class _AddToken:
    def __init__(self, token: str) -> None:
        self._pair = (METADATA_KEY, token)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(tuple(details.metadata or ()) + (self._pair,)))
        return details._replace(metadata=metadata)


# one class per call kind: a channel files each interceptor under the first kind it implements only
class _UnaryUnary(_AddToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _UnaryStream(_AddToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _StreamUnary(_AddToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


class _StreamStream(_AddToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Pass as ``grpc.aio.insecure_channel(..., interceptors=...)`` on every internal channel."""
    token = internal_token()
    return [kind(token) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)] if token else []


# ---- ZMQ (CURVE) -------------------------------------------------------------------------------------
def _server_keys(token: str) -> tuple[bytes, bytes]:
    import zmq
    from zmq.utils import z85

    secret = z85.encode(hashlib.sha256(b"splitserve-kv-events\0" + token.encode()).digest())
    return zmq.curve_public(secret), secret


def secure_zmq_server(sock: Any) -> None:
    """Make a PUB/REP socket a CURVE server (call before bind); no-op when auth is off."""
    token = internal_token()
    if token:
        _, secret = _server_keys(token)
        sock.curve_secretkey = secret
        sock.curve_server = True


def secure_zmq_client(sock: Any) -> None:
    """Make a SUB/REQ socket a CURVE client of a ``secure_zmq_server`` (call before connect)."""
    token = internal_token()
    if token:
        import zmq

        public, secret = zmq.curve_keypair()
        sock.curve_serverkey = _server_keys(token)[0]
        sock.curve_publickey = public
        sock.curve_secretkey = secret
