"""Engine exceptions: each message says what the user can do about it."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on bad input."""


class UnsupportedArchitecture(EngineError, ValueError):
    """config.json names a model architecture the engine does not implement."""


class CheckpointError(EngineError, FileNotFoundError):
    """The model directory lacks a file the engine needs, or a weight is missing."""


class PromptTooLong(EngineError, ValueError):
    """A prompt (plus at least one new token) does not fit the model's context."""


class UnknownRequest(EngineError, KeyError):
    """An operation named a request id the engine does not hold."""


class OutOfKVBlocks(EngineError, RuntimeError):
    """The KV pool cannot hold a single request; raise the budget or shorten it."""


class RankDied(EngineError, RuntimeError):
    """A tensor/expert-parallel rank process of the engine exited; the engine cannot continue and must be restarted."""
