"""Performance profile of one worker (GPU x model): the times a simulated worker takes.

A profile is a JSON file (`simulator/profiles/*.json`) with linear-in-features models:

    prefill_s(new, cached) = fixed_s + per_new_token_s * new + per_attention_pair_s * pairs
        pairs = new * cached + new * (new + 1) / 2   (causal attention: query x key pairs)
    decode_step_s(batch, context) = fixed_s + per_sequence_s * batch + per_context_token_s * context
        context = sum of the running sequences' lengths (KV read per step)
    transfer_s(bytes) = fixed_s + bytes / bytes_per_s

plus the KV size of one token and the KV capacity. A GPU benchmark writes the same
shape with `Profile.to_json` (coefficients fitted to its measurements), so a profile
measured later replaces a derived one without code changes. `derivation` says where
every coefficient comes from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path


class ProfileError(ValueError):
    """A profile file that cannot be used (the message names the field)."""


@dataclass(slots=True)
class PrefillModel:
    fixed_s: float
    per_new_token_s: float
    per_attention_pair_s: float

    def seconds(self, new_tokens: int, cached_tokens: int) -> float:
        if new_tokens <= 0:
            return 0.0
        pairs = new_tokens * cached_tokens + new_tokens * (new_tokens + 1) / 2
        return self.fixed_s + self.per_new_token_s * new_tokens + self.per_attention_pair_s * pairs


@dataclass(slots=True)
class DecodeModel:
    fixed_s: float
    per_sequence_s: float
    per_context_token_s: float
    max_batch: int = 256

    def step_seconds(self, batch: int, context_tokens: int) -> float:
        if batch <= 0:
            return 0.0
        return self.fixed_s + self.per_sequence_s * batch + self.per_context_token_s * context_tokens


@dataclass(slots=True)
class TransferModel:
    fixed_s: float
    bytes_per_s: float

    def seconds(self, num_bytes: int) -> float:
        return 0.0 if num_bytes <= 0 else self.fixed_s + num_bytes / self.bytes_per_s


@dataclass(slots=True)
class Profile:
    name: str
    hardware: str
    model: str
    kv_bytes_per_token: int
    kv_capacity_tokens: int
    prefill: PrefillModel
    decode: DecodeModel
    transfer: TransferModel
    derivation: dict[str, str] = field(default_factory=dict)

    def kv_capacity_blocks(self, block_size: int) -> int:
        return self.kv_capacity_tokens // block_size

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name (simulator/profiles/NAME.json) or a JSON file path."""
    path = Path(name_or_path)
    if not path.name.endswith(".json"):
        path = Path(str(resources.files("simulator") / "profiles" / f"{name_or_path}.json"))
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ProfileError(f"profile {path} is not valid JSON: {exc}") from exc
    return parse_profile(raw, str(path))


def parse_profile(raw: dict, where: str = "profile") -> Profile:
    try:
        profile = Profile(
            name=str(raw["name"]),
            hardware=str(raw["hardware"]),
            model=str(raw["model"]),
            kv_bytes_per_token=int(raw["kv_bytes_per_token"]),
            kv_capacity_tokens=int(raw["kv_capacity_tokens"]),
            prefill=PrefillModel(**raw["prefill"]),
            decode=DecodeModel(**raw["decode"]),
            transfer=TransferModel(**raw["transfer"]),
            derivation=dict(raw.get("derivation") or {}),
        )
    except KeyError as exc:
        raise ProfileError(f"{where}: missing field {exc.args[0]!r}") from exc
    except TypeError as exc:
        raise ProfileError(f"{where}: bad model coefficients ({exc})") from exc
    if profile.kv_capacity_tokens <= 0 or profile.kv_bytes_per_token <= 0 or profile.transfer.bytes_per_s <= 0:
        raise ProfileError(f"{where}: kv_capacity_tokens, kv_bytes_per_token and transfer.bytes_per_s must be > 0")
    return profile
