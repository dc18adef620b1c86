"""Decode worker: gRPC DecodeService around an engine core (engine/server/)."""
