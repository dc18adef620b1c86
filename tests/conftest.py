"""Checks that hold for the whole test session."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator

import pytest

from kvstore.segment import SHM_DIR, process_alive, segment_owner

SHARED_MEMORY = os.path.join(SHM_DIR, "splitserve-kv*")  # store segments and workers' shared KV pools


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_left_behind() -> Iterator[None]:
    """Every /dev/shm file the tests' processes created is gone at the end (tmpfs memory is only
    given back when someone unlinks the file: a SIGKILLed node's segment once filled 23 GB)."""
    before = set(glob.glob(SHARED_MEMORY))
    yield
    ours = _descendants(os.getpid()) | {os.getpid()}
    leaked = []
    for path in set(glob.glob(SHARED_MEMORY)) - before:
        owner = segment_owner(path)
        if owner is not None and (owner in ours or not process_alive(owner)):
            leaked.append(f"{path} ({os.path.getsize(path) >> 20} MiB, owner pid {owner})")
    assert not leaked, "the tests left shared memory behind: " + ", ".join(sorted(leaked))
