"""The scheduler's one config object, and how it is read from a YAML or JSON file.

A file names, for each of the three placements a request can get, a pipeline
filters -> weighted scorers -> picker (the shape of llm-d's endpoint picker), plus
the prefill/decode decider's thresholds:

    decider:
      basis: uncached            # colocate when the *uncached* prompt part is short (or: prompt)
      colocate_threshold_tokens: 256
    profiles:
      prefill:   {filters: [...], scorers: [{type: uncached-tokens, weight: 1.0}, ...], picker: {type: min-cost}}
      decode:    {...}           # decode worker of a disaggregated request
      colocated: {...}           # decode worker that also prefills

The shipped policies (router/policies/*.yaml) are such files; `--policy NAME` is a
shortcut for `--scheduler-config router/policies/NAME.yaml`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

PROFILES = ("prefill", "decode", "colocated")


class SchedulerConfigError(ValueError):
    """A scheduler config file or value that cannot be used (the message names the field)."""


class Policy(str, Enum):
    """The shipped configs (router/policies/NAME.yaml)."""

    KV_AWARE = "kv-aware"
    ROUND_ROBIN = "round-robin"
    LEAST_LOADED = "least-loaded"
    RANDOM = "random"


class DeciderBasis(str, Enum):
    UNCACHED = "uncached"  # prompt tokens the best colocated worker would still compute
    PROMPT = "prompt"  # the whole prompt length (policies that ignore the prefix index)
    COST = "cost"  # as UNCACHED, and also when a decode worker holds more of the prompt and costs less
    CHEAPEST = "cheapest"  # as UNCACHED, and also whenever the best decode worker costs less than the best prefill one


@dataclass(slots=True)
class PluginSpec:
    """One filter, scorer or picker: its registered type, weight (scorers) and parameters."""

    type: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ProfileSpec:
    filters: list[PluginSpec] = field(default_factory=list)
    scorers: list[PluginSpec] = field(default_factory=list)
    picker: PluginSpec = field(default_factory=lambda: PluginSpec("min-cost"))


@dataclass(slots=True)
class SchedulerConfig:
    policy: Policy = Policy.KV_AWARE  # used when `profiles` is empty: load that shipped config
    basis: DeciderBasis | None = None  # None: the policy file's
    colocate_threshold_tokens: int = 256  # uncached prompt tokens below which decode prefills itself
    prefill_saturation_tokens: int = 65536  # queued tokens per prefill worker that count as saturated
    ttft_slo_ms: float | None = None
    default_prefill_rate_tps: float = 8000.0  # until a worker's rate has been measured
    seed: int | None = None
    # Count a prompt the scheduler placed as held by its prefilling worker until its first token
    # (router/inflight_prefixes.py), so that requests sharing it queue there and hit it.
    inflight_prefixes: bool = False
    profiles: dict[str, ProfileSpec] = field(default_factory=dict)

    def resolved(self) -> SchedulerConfig:
        """This config with its profiles filled from the shipped policy when it has none."""
        if self.profiles:
            if self.basis is None:
                self.basis = DeciderBasis.UNCACHED
            return self
        shipped = load_policy(self.policy)
        self.profiles = shipped.profiles
        self.basis = self.basis or shipped.basis
        self.inflight_prefixes = self.inflight_prefixes or shipped.inflight_prefixes
        return self


def policy_path(policy: Policy | str) -> Path:
    name = Policy(policy).value
    return Path(str(resources.files("router") / "policies" / f"{name}.yaml"))


def load_policy(policy: Policy | str) -> SchedulerConfig:
    config = load_scheduler_config(policy_path(policy))
    config.policy = Policy(policy)
    return config


def load_scheduler_config(path: str | Path) -> SchedulerConfig:
    """Read a scheduler config file (.json, or YAML otherwise); raises SchedulerConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SchedulerConfigError(f"cannot read scheduler config {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise SchedulerConfigError(
            f"scheduler config {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from exc
    return parse_scheduler_config(raw, str(path))


def parse_scheduler_config(raw: Any, where: str = "scheduler config") -> SchedulerConfig:
    if not isinstance(raw, dict):
        raise SchedulerConfigError(f"{where}: expected a mapping with 'decider' and 'profiles'")
    _only(raw, {"decider", "profiles"}, where)
    config = SchedulerConfig()
    decider = raw.get("decider") or {}
    if not isinstance(decider, dict):
        raise SchedulerConfigError(f"{where}: 'decider' must be a mapping")
    known = {f.name for f in fields(SchedulerConfig)} - {"policy", "profiles"}
    _only(decider, known, f"{where}: decider")
    for name, value in decider.items():
        setattr(config, name, _decider_value(name, value, where))
    profiles = raw.get("profiles")
    if not isinstance(profiles, dict) or set(profiles) != set(PROFILES):
        raise SchedulerConfigError(f"{where}: 'profiles' must define exactly {', '.join(PROFILES)}")
    config.profiles = {name: _profile(spec, f"{where}: profiles.{name}") for name, spec in profiles.items()}
    if config.basis is None:
        config.basis = DeciderBasis.UNCACHED
    return config


def _decider_value(name: str, value: Any, where: str) -> Any:
    try:
        if name == "basis":
            return DeciderBasis(value)
        if name == "inflight_prefixes":
            if not isinstance(value, bool):
                raise TypeError(value)
            return value
        if value is None and name in ("ttft_slo_ms", "seed"):
            return None
        if name in ("ttft_slo_ms", "default_prefill_rate_tps"):
            return float(value)
        return int(value)
    except (TypeError, ValueError) as exc:
        raise SchedulerConfigError(f"{where}: decider.{name}: bad value {value!r}") from exc


def _profile(raw: Any, where: str) -> ProfileSpec:
    if not isinstance(raw, dict):
        raise SchedulerConfigError(f"{where}: expected a mapping with filters, scorers, picker")
    _only(raw, {"filters", "scorers", "picker"}, where)
    filters = [_plugin(f, f"{where}.filters[{i}]", weighted=False) for i, f in enumerate(raw.get("filters") or [])]
    scorers = [_plugin(s, f"{where}.scorers[{i}]", weighted=True) for i, s in enumerate(raw.get("scorers") or [])]
    picker = _plugin(raw.get("picker") or {"type": "min-cost"}, f"{where}.picker", weighted=False)
    # Build each plugin once now, so that an unknown type or parameter fails at startup.
    from router.filters import build_filter
    from router.pickers import build_picker
    from router.scorers import build_scorer

    for spec, build in [(f, build_filter) for f in filters] + [(s, build_scorer) for s in scorers] + [(picker, build_picker)]:
        try:
            build(spec)
        except (KeyError, TypeError, ValueError) as exc:
            raise SchedulerConfigError(f"{where}: {exc}") from exc
    return ProfileSpec(filters, scorers, picker)


def _plugin(raw: Any, where: str, weighted: bool) -> PluginSpec:
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise SchedulerConfigError(f"{where}: expected a mapping with a 'type'")
    params = {k: v for k, v in raw.items() if k not in ("type", "weight")}
    if "weight" in raw and not weighted:
        raise SchedulerConfigError(f"{where}: only scorers take a weight")
    try:
        weight = float(raw.get("weight", 1.0))
    except (TypeError, ValueError) as exc:
        raise SchedulerConfigError(f"{where}: weight must be a number, got {raw['weight']!r}") from exc
    return PluginSpec(raw["type"], weight, params)


def _only(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SchedulerConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}")
