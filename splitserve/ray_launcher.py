"""`splitserve up --ray`: the same stack, each component a Ray actor on a running cluster.

Each actor runs the component's own entry point (`python -m splitserve.cli ...`, the
argv that the process launcher uses) as a child process, so a component behaves the
same under Ray, under `up` and in a Kubernetes pod. Workers ask Ray for `num_gpus`
(their tensor parallel size) when the cluster has GPUs; every actor asks for one CPU.
The cluster is the one `ray.init(address="auto")` finds (RAY_ADDRESS, else the latest
`ray start` on this machine). Tested on a local single-node cluster
(tests/ray/test_ray_up.py).

Ports are chosen on the machine that plans the stack and every component binds
127.0.0.1, so as written this only places the stack on a single-node cluster; a
multi-node placement needs each actor to pick its ports and advertise its node IP.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from splitserve.supervisor import Component


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

    from splitserve.supervisor import StopRequested, healthy

    @ray.remote
    class ComponentActor:
        """Runs one component's entry point as a child process of the actor."""

        def __init__(self, argv: list[str], cwd: str, log: str | None) -> None:
            import os
            import subprocess

            out = open(log, "wb") if log else None  # the child keeps it
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            err = subprocess.STDOUT if out else None
            self.process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err)

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

    # a namespace per stack: the actor names stay unique with several stacks on one cluster
    ray.init(address="auto", namespace=f"splitserve-up-{args.port}", log_to_driver=False)
    stop = StopRequested()
    log_dir = Path(args.log_dir) if args.log_dir else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    actors = []
    try:
        for comp in components:
            is_worker = comp.name.startswith(("prefill-", "decode-"))
            gpus = args.tensor_parallel_size if is_worker and has_gpus else 0
            # mypy does not apply class decorators: it misses the ActorClass that @ray.remote made
            actor = ComponentActor.options(num_gpus=gpus, num_cpus=1, name=comp.name).remote(  # type: ignore[attr-defined]
                comp.argv, os.getcwd(), str(log_dir / f"{comp.name}.log") if log_dir else None
            )
            actors.append((comp, actor))
        deadline = time.monotonic() + args.ready_timeout
        pending = [comp for comp, _ in actors]
        while pending and not stop.requested:
            for comp, actor in actors:
                ref = actor.poll.remote()
                started, _ = ray.wait([ref], timeout=1.0)  # an actor still waiting for a CPU is not started yet
                if started and (code := ray.get(ref)) is not None:
                    raise RuntimeError(f"{comp.name} exited with code {code} on Ray (its log: --log-dir, or Ray's worker logs)")
            pending = [c for c in pending if not healthy(c)]
            if pending and time.monotonic() > deadline:
                raise TimeoutError(
                    f"not ready on Ray after {args.ready_timeout:.0f}s: {[c.name for c in pending]} "
                    "(each component needs one free CPU on the cluster: `ray status`)"
                )
            time.sleep(0.5)
        if not stop.requested:
            names = [c.name for c, _ in actors]
            print(f"[up] serving on http://127.0.0.1:{args.port} (Ray actors: {names})", flush=True)
        while not stop.requested:
            time.sleep(0.5)
        return 0
    finally:
        print("[up] shutting down the Ray actors", flush=True)
        for _, actor in reversed(actors):  # router first, then workers, then the store
            try:
                ray.get(actor.stop.remote(15.0), timeout=30)
            except Exception as exc:  # an actor that died already has nothing to stop
                print(f"[up] stopping an actor: {exc}", flush=True)
            ray.kill(actor)
        ray.shutdown()
