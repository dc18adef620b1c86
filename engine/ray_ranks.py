"""Ranks 1..N-1 as Ray actors in a placement group (``distributed_executor="ray"``).

UNTESTED here: ray is not installed in this project's environment. Rank 0 stays
in the calling process (it must share a host with the ranks: the rendezvous and
plan channel use 127.0.0.1), so the placement group packs one GPU per rank on
this node (STRICT_PACK). The plan pipes are handed to the actors like to
processes, which only works for actors on this host.
"""

from __future__ import annotations

from engine.config import EngineConfig


class RayRank:
    """A rank actor seen through the slice of multiprocessing.Process the executor uses."""

    def __init__(self, ray, actor, ref) -> None:  # type: ignore[no-untyped-def]
        self._ray, self._actor, self._ref = ray, actor, ref
        self.pid: int | None = None
        self.exitcode: int | None = None

    def is_alive(self) -> bool:
        done, _ = self._ray.wait([self._ref], timeout=0)
        if done and self.exitcode is None:
            try:
                self._ray.get(self._ref)
                self.exitcode = 0
            except Exception:  # the actor died or raised
                self.exitcode = 1
        return not done

    def join(self, timeout: float | None = None) -> None:
        self._ray.wait([self._ref], timeout=timeout)

    def kill(self) -> None:
        self._ray.kill(self._actor)


def start_ray_ranks(config: EngineConfig, world: int, port: int, inboxes: list, eos: set[int]) -> list[RayRank]:  # type: ignore[type-arg]
    try:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    except ImportError as exc:
        raise ImportError(
            "distributed_executor='ray' needs Ray: pip install 'ray[default]' (or use --distributed-executor mp)"
        ) from exc
    from engine.rank_worker import run_rank

    if not ray.is_initialized():
        ray.init()
    gpus = 1 if config.device != "cpu" else 0
    pg = placement_group([{"GPU": gpus, "CPU": 1}] * (world - 1), strategy="STRICT_PACK")
    ray.get(pg.ready())

    @ray.remote(num_gpus=gpus, num_cpus=1)
    class Rank:
        def run(self, rank: int) -> None:
            run_rank(config, rank, world, port, inboxes[rank - 1], eos)

    ranks = []
    for r in range(1, world):
        strategy = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=r - 1)
        actor = Rank.options(scheduling_strategy=strategy).remote()
        ranks.append(RayRank(ray, actor, actor.run.remote(r)))
    return ranks
