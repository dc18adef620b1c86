"""Prefill worker: gRPC PrefillService around an engine core (engine/server/)."""
