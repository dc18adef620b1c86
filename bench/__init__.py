"""Benchmarks and load generators (never run as tests)."""
