"""Channel and server options every gRPC end of the KV store shares (a message one end may send, the other must accept)."""

from __future__ import annotations

MAX_MESSAGE_BYTES = 256 << 20
STORE_GRPC_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
