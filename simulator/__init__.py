"""Simulated prefill and decode workers for routing experiments at cluster scale (`splitserve sim`)."""
