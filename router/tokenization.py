"""Tokenizer, chat template and model limits from a local checkpoint directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.tokenizer_files import eos_token_ids

MAX_CLIENT_TEMPLATE_CHARS = 64 * 1024


class TokenizerLoadError(RuntimeError):
    """The model directory lacks a usable tokenizer."""


class ChatTemplateError(ValueError):
    """The messages could not be rendered with the model's chat template."""


@dataclass(slots=True)
class PromptTokenizer:
    tokenizer: Any  # transformers PreTrainedTokenizerFast
    max_model_len: int
    vocab_size: int
    eos_token_ids: set[int]

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> PromptTokenizer:
        model_dir = Path(model_dir)
        if not (model_dir / "tokenizer.json").is_file():
            raise TokenizerLoadError(f"no tokenizer.json in {model_dir}")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        config = _read_json(model_dir / "config.json")
        max_len = int(config.get("max_position_embeddings") or getattr(tokenizer, "model_max_length", 0) or 4096)
        vocab = int(config.get("vocab_size") or len(tokenizer))
        return cls(tokenizer, max_len, vocab, eos_token_ids(model_dir, tokenizer))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids)

    def token_str(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs: Any) -> list[int]:
        text = self.render_chat_template(messages, add_generation_prompt, **kwargs)
        # The template already holds any BOS token: do not add special tokens again.
        return self.encode(text, add_special_tokens=False)

    def special_tokens(self) -> dict[str, str]:
        """bos_token, eos_token, ... as a chat template expects them."""
        return {k: v for k, v in getattr(self.tokenizer, "special_tokens_map", {}).items() if isinstance(v, str)}

    def render_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text (transformers renders in jinja2's ImmutableSandboxedEnvironment)."""
        if not getattr(self.tokenizer, "chat_template", None) and "chat_template" not in kwargs:
            raise ChatTemplateError("this model has no chat template; use /v1/completions")
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
            )
        except Exception as exc:  # jinja2 errors and template-raised exceptions
            raise ChatTemplateError(f"chat template failed: {exc}") from exc


def check_client_template(kwargs: dict, allowed: bool) -> None:
    """A client-sent template is code run on the router: refused unless the operator allows it, and bounded."""
    template = kwargs.get("chat_template")
    if template is None:
        return
    if not allowed:
        raise ChatTemplateError("chat_template_kwargs.chat_template is not allowed on this server "
                                "(the operator can enable it with --allow-client-chat-template)")  # fmt: skip
    if not isinstance(template, str) or len(template) > MAX_CLIENT_TEMPLATE_CHARS:
        raise ChatTemplateError(f"chat_template must be a string of at most {MAX_CLIENT_TEMPLATE_CHARS} characters")


def messages_as_dicts(messages: list[Any]) -> list[dict]:
    """Pydantic chat messages -> template input (text parts joined)."""
    out = []
    for m in messages:
        content = m.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        item = {"role": m.role, "content": content or ""}
        if m.name:
            item["name"] = m.name
        if m.tool_calls:  # templates read arguments as a mapping (Qwen, Llama 3 do `| tojson`)
            item["tool_calls"] = [
                {"id": c.id, "type": c.type, "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                for c in m.tool_calls
            ]
        if m.tool_call_id:
            item["tool_call_id"] = m.tool_call_id
        out.append(item)
    return out


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # not JSON: the template gets the text as the client sent it


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
