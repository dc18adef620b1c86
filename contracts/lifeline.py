"""Child processes die with their parent: the kernel's parent-death signal (Linux prctl).

`splitserve up` starts every component with ``die_with_parent`` as the Popen
``preexec_fn``; a worker starts its engine core, and an engine core its tensor-parallel
ranks, through ``run_tied``. If the parent is SIGKILLed (or crashes), the kernel sends
SIGKILL to the child at once, so no component keeps serving unsupervised with parent
PID 1. The polling liveness checks in the engine core and the ranks stay as the second
line (non-Linux hosts, and a parent that died before the child set its signal).

SIGKILL rather than SIGTERM: a child whose supervisor is gone has nobody to report to
and no bound on a graceful drain; the orderly path is `up`'s own SIGTERM shutdown.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent exits.

    ``parent_pid`` closes the race where the parent died before this call: the process
    has then already been re-parented, and it exits at once. No-op off Linux.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent is already gone (we were re-parented before prctl took effect)


def preexec_for(parent_pid: int) -> Callable[[], None]:
    """A Popen ``preexec_fn`` that ties the child to ``parent_pid`` (call in the parent, before Popen)."""
    return lambda: die_with_parent(parent_pid)


def run_tied(parent_pid: int, target: Callable[..., object], *args: object) -> object:
    """multiprocessing ``Process`` target: tie this process to ``parent_pid``, then run ``target(*args)``."""
    die_with_parent(parent_pid)
    return target(*args)
