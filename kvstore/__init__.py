"""Distributed, content-addressed KV-block store: master, storage nodes, client."""
