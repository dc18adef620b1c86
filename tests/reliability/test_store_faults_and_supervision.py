"""Fault injection on a real `splitserve up` stack (1 prefill + 1 decode, tiny model, CPU).

- SIGKILL of `up`: no process of the stack survives (checked by pid, engine cores included).
- SIGKILL of the kvstore node, then of the master, under load: requests keep completing
  (colocated recompute), `up` restarts the component, and the store is written to again.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from fault_stack import Load, alive, descendants, make_tiny_model, metric, start_up, wait_for

pytestmark = pytest.mark.slow

RECEIVED = "splitserve_kvstore_received_bytes_total"
LONGEST_REQUEST_S = 25.0  # a probe may wait out the decode worker's KV wait (10 s) and then recompute


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_model(tmp_path_factory.mktemp("fault-model") / "tiny-llama")


def test_killing_up_leaves_no_process_of_the_stack(model: str, tmp_path: Path) -> None:
    stack = start_up(model, tmp_path, "--prefill", "1", "--decode", "1")
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


@pytest.fixture(scope="module")
def stack(model: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    stack = start_up(model, tmp_path_factory.mktemp("fault-stack"), "--prefill", "1", "--decode", "1",
                     "--colocate-threshold", "16")  # fmt: skip
    yield stack
    assert stack.stop() == 0, stack.tail()


@pytest.mark.parametrize("victim", ["kvstore-node", "kvstore-master"])
def test_a_killed_store_component_fails_no_request_and_is_used_again(stack, victim: str) -> None:  # type: ignore[no-untyped-def]
    master_metrics = stack.state["metrics"]["kvstore-master"]
    load = Load(stack.url, concurrency=2).start()
    try:
        wait_for(lambda: load.ok_since(0) >= 4, 60, "requests complete before the fault")
        old_pid = stack.state["pids"][victim]
        killed = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: stack.reload()["pids"][victim] != old_pid, 30, f"`up` restarted {victim}")
        written = metric(master_metrics, RECEIVED) if victim == "kvstore-node" else 0.0
        wait_for(lambda: metric(master_metrics, RECEIVED) > written, 60, "the store receives KV blocks again")
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
