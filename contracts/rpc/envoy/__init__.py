"""Generated stubs of the vendored, trimmed Envoy ext_proc API (proto/contracts/rpc/envoy/README.md)."""
