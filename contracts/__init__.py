"""Every shape that crosses a process boundary, defined once: the ground floor of the tree.

Nothing here imports a component (engine, kvstore, router, ...); every component may import
from here. docs/contracts.md maps each boundary to its file.

| file | what processes agree on |
| --- | --- |
| ``rpc/`` | gRPC stubs generated from ``proto/contracts/rpc/`` (``make protos``): worker, KV store, Envoy ext_proc |
| ``sampling.py`` | sampling parameters: router -> worker (gRPC) -> engine core (ZMQ) |
| ``kv_handle.py`` | where a prefilled prompt's KV can be fetched, and the direct transport's pool descriptor and release |
| ``core_messages.py`` | a worker's gRPC server <-> its engine-core process (ZMQ) |
| ``rank_plan.py`` | tensor-parallel rank 0 -> the other ranks (pipes, sockets) |
| ``kv_events.py`` | KV events: workers and store -> routers (ZMQ PUB) |
| ``internal_auth.py`` | the deployment's secret on every internal gRPC call and ZMQ socket |
| ``lifeline.py`` | a child process ends with its parent |
| ``sizes.py`` | what a byte size on any command line means |
| ``ports.py`` | how a launcher picks the port it hands a child |
| ``grpc_options.py`` | the KV store's gRPC message limits, the same at both ends |
"""
