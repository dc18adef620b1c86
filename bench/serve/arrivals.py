"""Arrival process: when each request (or conversation) is sent."""

from __future__ import annotations

import numpy as np


def arrival_offsets(count: int, rate: float | None, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Send times in seconds from the start, first at 0.

    Inter-arrival gaps are gamma distributed with shape `burstiness` and mean
    1/`rate`: shape 1 is a Poisson process; below 1 is burstier, above 1 smoother
    (the vLLM/SGLang convention). `rate` None sends everything at once.
    """
    if count <= 0:
        return []
    if rate is None:
        return [0.0] * count
    if rate <= 0 or burstiness <= 0:
        raise ValueError(f"need rate > 0 and burstiness > 0, got {rate=} {burstiness=}")
    gaps = np.random.default_rng(seed).gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=count - 1)
    return [0.0, *np.cumsum(gaps).tolist()]
