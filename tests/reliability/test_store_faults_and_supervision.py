"""Fault injection on a real `splitserve up` stack (1 prefill + 2 decode, tiny model, CPU).

- SIGKILL of `up`: no process of the stack survives (checked by pid, engine cores included).
- SIGKILL of the kvstore node, then of the master, under load: requests keep completing
  (colocated recompute), `up` restarts the component, and the store is written to again; the node
  also on Mooncake Store (`up --kvstore-backend mooncake`: its mooncake_client memory node).
- SIGSTOP of a decode worker under load: no request waits longer than the stall bound
  (5 s of silence) plus slack; what fails says why; after SIGCONT the worker serves again,
  and once the load stops no worker holds a request or a KV block.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from bench.fault_load import Load, alive, descendants, metric, start_up, wait_for
from kv_transfer.peer_pool import remove_orphaned_pools
from kvstore.segment import remove_orphaned_segments

pytestmark = pytest.mark.slow

RECEIVED = "splitserve_kvstore_received_bytes_total"
MOONCAKE_COMMITTED = "master_batch_put_end_items_total"  # mooncake_master's count of committed objects
LONGEST_REQUEST_S = 25.0  # a probe may wait out the decode worker's KV wait (10 s) and then recompute
STALL_BOUND_S = 5.0  # the router's default --stall-timeout
STOP_S = 25.0  # how long the decode worker stays stopped
WORKER_BUSY = ("splitserve_worker_running_requests", "splitserve_worker_waiting_requests", "splitserve_worker_kv_usage_ratio")


def test_killing_up_leaves_no_process_of_the_stack(model: str, tmp_path: Path) -> None:
    stack = start_up(model, tmp_path, "--prefill", "1", "--decode", "1")
    tree: set[int] = set()
    try:
        tree = descendants(stack.process.pid)
        # components + an engine core under each worker (+ multiprocessing's resource trackers)
        assert len(tree) >= len(stack.state["pids"]) + 2, tree
        os.kill(stack.process.pid, signal.SIGKILL)
        stack.process.wait()
        wait_for(lambda: not any(alive(pid) for pid in tree), 15, "every process of the stack exited")
    finally:
        for pid in descendants(stack.process.pid):  # nothing should be left; never leak into other tests
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(alive(pid) for pid in tree), 15, "the killed processes exited")
        # the killed node and prefill worker could not unlink their shared memory: what a restart would sweep
        remove_orphaned_segments()
        remove_orphaned_pools()


@pytest.mark.parametrize(("backend", "victim"), [("ours", "kvstore-node"), ("ours", "kvstore-master"),
                                                  ("mooncake", "kvstore-node"), ("mooncake", "kvstore-master")])  # fmt: skip
def test_a_killed_store_component_fails_no_request_and_is_used_again(
    request: pytest.FixtureRequest, backend: str, victim: str
) -> None:
    stack = request.getfixturevalue("stack" if backend == "ours" else "mooncake_stack")
    master_metrics = stack.state["metrics"]["kvstore-master"]
    written_metric = RECEIVED if backend == "ours" else MOONCAKE_COMMITTED
    load = Load(stack.url, concurrency=2).start()
    try:
        wait_for(lambda: load.ok_since(0) >= 4, 60, "requests complete before the fault")
        old_pid = stack.state["pids"][victim]
        killed = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: stack.reload()["pids"][victim] != old_pid, 30, f"`up` restarted {victim}")
        written = metric(master_metrics, written_metric) if victim == "kvstore-node" else 0.0
        wait_for(lambda: metric(master_metrics, written_metric) > written, 60, "the store receives KV blocks again")
        recovered = time.monotonic()
        wait_for(lambda: load.ok_since(recovered) >= 4, 60, "requests complete after recovery")
    finally:
        outcomes = load.stop()
    failed = [o for o in outcomes if o.status != 200]
    assert not failed, failed[:3]
    assert max(o.seconds for o in outcomes) < LONGEST_REQUEST_S
    assert alive(stack.state["pids"][victim]) and not alive(old_pid)
    print(f"{victim}: {len(outcomes)} requests, 0 failed, longest {max(o.seconds for o in outcomes):.1f}s, "
          f"store written again {recovered - killed:.1f}s after the kill")  # fmt: skip


def test_a_stopped_decode_worker_holds_no_request_beyond_the_stall_bound(stack) -> None:
    victim = stack.state["pids"]["decode-0"]
    load = Load(stack.url, concurrency=3).start()
    try:
        wait_for(lambda: load.ok_since(0) >= 4, 60, "requests complete before the fault")
        stopped = time.monotonic()
        os.killpg(victim, signal.SIGSTOP)  # the gRPC server and its engine core
        try:
            # stopped far longer than the bound: a request held until SIGCONT would take over STOP_S
            time.sleep(STOP_S)
            assert load.ok_since(stopped + STALL_BOUND_S) >= 3, "no request completed around the stopped worker"
        finally:
            os.killpg(victim, signal.SIGCONT)
        resumed = time.monotonic()
        wait_for(lambda: load.ok_since(resumed) >= 6, 60, "requests complete after SIGCONT")
    finally:
        outcomes = load.stop()
    longest = max(o.seconds for o in outcomes)
    failed = [o for o in outcomes if o.status != 200]
    # detection (5 s), one abort RPC (1 s), a recompute elsewhere; slack for two loaded cores
    assert longest < STOP_S - 5.0, longest
    assert all("stalled" in o.error for o in failed), failed[:3]  # only requests that had produced tokens there
    assert len(failed) <= 3  # at most one in flight per load thread
    print(f"SIGSTOP decode-0: {len(outcomes)} requests, {len(failed)} failed, longest {longest:.1f}s")
    # nothing leaks: once the load is gone, every worker is idle and holds no KV blocks for a request
    workers = [a for name, a in stack.reload()["metrics"].items() if name.startswith(("prefill-", "decode-"))]

    def idle() -> bool:
        return all(metric(a, m) == 0 for a in workers for m in WORKER_BUSY)

    wait_for(idle, 30, "every worker idle with no KV in use")
