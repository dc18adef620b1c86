"""Fixtures of the deploy tests live in deploy_support (a unique module name, importable by tests)."""

from deploy_support import allowed_series, chart, interfaces_text, promtool, render  # noqa: F401
