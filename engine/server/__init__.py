"""What prefill and decode workers share: the engine-core process and its ZMQ protocol,
the async client the gRPC server uses, KV transfer to/from the store, metrics, gRPC plumbing."""
