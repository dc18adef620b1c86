"""Every shape that crosses a process boundary, defined once (the ground floor: imports nothing of ours above it).

| file | boundary |
| --- | --- |
| ``engine_core.py`` | a worker's gRPC server <-> its engine-core process (ZMQ) |
| ``sampling.py`` | sampling parameters: router -> worker (gRPC) -> engine core (ZMQ) |
| ``kv_handle.py`` | where a prefilled prompt's KV can be fetched: prefill -> router -> decode |
| ``kv_events.py`` | KV events: workers and store -> routers (ZMQ PUB) |
| ``rank_plan.py`` | tensor-parallel rank 0 -> the other ranks (pipes / sockets) |
| ``sizes.py`` | what a byte size on any command-line flag means |
| ``rpc/`` | gRPC stubs generated from ``proto/`` (``make protos``) |
"""
