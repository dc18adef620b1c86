"""A private CUDA MPS control daemon for the workers this launcher starts on one GPU.

Without MPS, two processes on one GPU time-slice it: a decode step waits for the prefill
process's slice and the other way round, so prefill and decode workers sharing a card each
run at a fraction of its speed. Under MPS their kernels run side by side, as one context's
streams would (docs/performance.md, "KV connector" on one H200). The daemon is our own
(pipe and log folders in a temporary directory, nothing system-wide changes) and stops when
the block ends; every CUDA process started inside the block with the returned environment
joins it. On a cluster the GPU operator's MPS sharing plays this part instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

CONTROL = "nvidia-cuda-mps-control"


class MPSUnavailable(RuntimeError):
    pass


@contextlib.contextmanager
def mps_daemon(active_thread_percentage: int | None = None) -> Iterator[dict[str, str]]:
    """Start a control daemon; yield the environment variables that point CUDA processes at it.

    ``active_thread_percentage`` caps the SMs each client may use (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE).
    """
    control = shutil.which(CONTROL)
    if control is None:
        raise MPSUnavailable(f"{CONTROL} is not on PATH: MPS needs the NVIDIA driver's utilities")
    root = tempfile.mkdtemp(prefix="splitserve-mps-")
    env = {"CUDA_MPS_PIPE_DIRECTORY": os.path.join(root, "pipe"), "CUDA_MPS_LOG_DIRECTORY": os.path.join(root, "log")}
    if active_thread_percentage is not None:
        if not 1 <= active_thread_percentage <= 100:
            raise ValueError(f"active thread percentage must be 1-100, got {active_thread_percentage}")
        env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(active_thread_percentage)
    for path in (env["CUDA_MPS_PIPE_DIRECTORY"], env["CUDA_MPS_LOG_DIRECTORY"]):
        os.makedirs(path)
    daemon_env = dict(os.environ, **env)
    started = subprocess.run([control, "-d"], env=daemon_env, capture_output=True, text=True, timeout=30)
    if started.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise MPSUnavailable(f"{CONTROL} -d failed ({started.returncode}): {started.stderr.strip() or started.stdout.strip()}")
    try:
        yield env
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run([control], input="quit\n", env=daemon_env, capture_output=True, text=True, timeout=30)
        shutil.rmtree(root, ignore_errors=True)
