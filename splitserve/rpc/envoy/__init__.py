"""Generated stubs of the vendored, trimmed Envoy ext_proc API (proto/splitserve/rpc/envoy/README.md)."""
