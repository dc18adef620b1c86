"""Checks on a raw request body before its fields are parsed (hooked into router/protocol.py).

- Parameters this server does not implement are a 400 naming the parameter, not a
  silent 200 that ignores it (``REJECTED_FIELDS``; a field leaves the list when it is
  built). A null value, or the neutral value of ``NEUTRAL_VALUES``, passes.
- Text must be valid Unicode: JSON can carry a lone surrogate ("\\ud800"), which no
  tokenizer can encode; it is a 400 here instead of a 500 later.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import PydanticCustomError

# best_of is declared on CompletionRequest: equal to n it is served, any other value is a 400 there
REJECTED_FIELDS: frozenset[str] = frozenset({"suffix", "audio", "modalities", "prediction", "web_search_options"})
NEUTRAL_VALUES: dict[str, Any] = {}


def check_raw_body(body: Any) -> Any:
    """Raise a validation error (the API answers 400) or return ``body`` unchanged."""
    if not isinstance(body, dict):
        return body
    for name in REJECTED_FIELDS & body.keys():
        value = body[name]
        if value is not None and value != NEUTRAL_VALUES.get(name, object()):
            raise PydanticCustomError(
                "unsupported_parameter", f"the parameter {name!r} is not supported by this server; remove it"
            )
    _check_text(body, "")
    return body


def _check_text(value: Any, path: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            where = f" in {path!r}" if path else ""
            raise PydanticCustomError(
                "invalid_text", f"text{where} is not valid Unicode (lone surrogate at offset {exc.start})"
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, path)
            _check_text(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if type(item) is not int:  # token ids (most of a long prompt's body) hold no text: no call, no path
                _check_text(item, f"{path}.{i}")
