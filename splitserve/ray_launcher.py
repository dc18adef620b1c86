"""`splitserve up --ray`: the same stack, each component a Ray actor on a running cluster.

UNTESTED: Ray is not installed on the machines this was written on. Each actor runs
the component's own entry point (`python -m splitserve.cli ...`, the argv that the
process launcher uses) as a child process, so a component behaves the same under
Ray, under `up` and in a Kubernetes pod. Workers ask Ray for `num_gpus` (their tensor
parallel size); kvstore and router ask for CPUs only. Ports are chosen on the machine
that plans the stack, and every component binds 127.0.0.1, so as written this only
places the stack on a single-node cluster; a multi-node placement needs each actor to
pick its ports and advertise its node IP.
"""

from __future__ import annotations

import argparse
import signal
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from splitserve.up import Component


class RayMissing(SystemExit):
    """`--ray` without the ray package."""


def require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ModuleNotFoundError as exc:
        raise RayMissing(
            "splitserve up --ray: the `ray` package is not installed. Install it with "
            "`.venv/bin/pip install 'ray[default]'` and start a cluster (`ray start --head`), "
            "or run `splitserve up` without --ray to start the components as local processes."
        ) from exc


def run_on_ray(components: list[Component], args: argparse.Namespace) -> int:
    require_ray()
    import ray

    @ray.remote
    class ComponentActor:
        """Runs one component's entry point as a child process of the actor."""

        def __init__(self, argv: list[str]) -> None:
            import subprocess

            self.process = subprocess.Popen(argv)

        def poll(self) -> int | None:
            return self.process.poll()

        def stop(self, grace_s: float) -> int:
            import subprocess

            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
            return self.process.wait()

    from splitserve.up import healthy

    ray.init(address="auto")
    actors = []
    for comp in components:
        is_worker = comp.name.startswith(("prefill-", "decode-"))
        options = {"num_gpus": args.tensor_parallel_size if is_worker else 0, "num_cpus": 1, "name": comp.name}
        actors.append((comp, ComponentActor.options(**options).remote(comp.argv)))
    stopping = False

    def on_signal(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        deadline = time.monotonic() + args.ready_timeout
        pending = [comp for comp, _ in actors]
        while pending and not stopping:
            pending = [c for c in pending if not healthy(c)]
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready on Ray after {args.ready_timeout:.0f}s: {[c.name for c in pending]}")
            time.sleep(0.5)
        print(f"[up] serving on http://127.0.0.1:{args.port} (Ray actors: {[c.name for c, _ in actors]})", flush=True)
        while not stopping:
            time.sleep(0.5)
        return 0
    finally:
        for _, actor in reversed(actors):
            ray.get(actor.stop.remote(15.0))
