"""What a byte size on any command-line flag or URL means: units as written.

``1GiB`` = 2^30 bytes, ``1GB`` = 10^9 (and KiB/MiB/TiB, kB/MB/TB alike); Kubernetes' ``1Gi`` is
``1GiB``; a plain number is bytes. A bare ``1G`` is refused: it is 10^9 to some tools and 2^30
to others, and a KV pool off by 7% is a surprise that shows only under load.
"""

from __future__ import annotations

import argparse
import re

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
    "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40,
}  # fmt: skip


def parse_size(text: str) -> int:
    """'4GiB' -> 4294967296, '1GB' -> 1000000000, '512' -> 512; argparse.ArgumentTypeError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (e.g. 512MiB = 512 * 2^20 bytes, 4GiB = 4 * 2^30, 1GB = 10^9, or plain bytes)"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
