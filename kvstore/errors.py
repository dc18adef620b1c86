"""Store errors: each maps to one gRPC status code so the edge can report it precisely."""

from __future__ import annotations

import grpc


class StoreError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidRequest(StoreError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ObjectNotFound(StoreError):
    code = grpc.StatusCode.NOT_FOUND


class ObjectTooLarge(StoreError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class StoreFull(StoreError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ChecksumMismatch(StoreError):
    code = grpc.StatusCode.DATA_LOSS


class NoStorageNodes(StoreError):
    code = grpc.StatusCode.UNAVAILABLE


class PutExpired(StoreError):
    """The put was aborted, timed out, or lost a replica's node before commit."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def error_from_code(code: int, message: str) -> StoreError:
    """Rebuild a specific error on the client side from a per-key result."""
    by_code = {
        grpc.StatusCode.INVALID_ARGUMENT.value[0]: InvalidRequest,
        grpc.StatusCode.NOT_FOUND.value[0]: ObjectNotFound,
        grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]: StoreFull,
        grpc.StatusCode.DATA_LOSS.value[0]: ChecksumMismatch,
        grpc.StatusCode.UNAVAILABLE.value[0]: NoStorageNodes,
        grpc.StatusCode.FAILED_PRECONDITION.value[0]: PutExpired,
    }
    return by_code.get(code, StoreError)(message)


def code_number(code: grpc.StatusCode) -> int:
    return code.value[0]
