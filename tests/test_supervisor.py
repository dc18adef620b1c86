"""splitserve/supervisor.py on real (tiny) processes: a crashed component is restarted
with a growing back-off, a stop is bounded even when a child ignores SIGTERM, and the
children die with their parent (parent-death signal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from splitserve.supervisor import Component, RestartPolicy, Stack

CRASH = [sys.executable, "-c", "import sys; sys.exit(3)"]
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)",
]


def _quiet(lines: list[str]):
    return lines.append


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(first_backoff_s=0.5, max_backoff_s=4.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_a_crashing_component_is_restarted_with_backoff(tmp_path: Path) -> None:
    lines: list[str] = []
    stack = Stack([Component("crasher", CRASH)], tmp_path, RestartPolicy(first_backoff_s=0.2, max_backoff_s=0.4), _quiet(lines))
    stack.start()
    starts = [time.monotonic()]
    deadline = time.monotonic() + 20
    while stack.comps[0].restarts < 3 and time.monotonic() < deadline:
        if stack.supervise():
            starts.append(time.monotonic())
        time.sleep(0.02)
    stack.stop(2)
    assert stack.comps[0].restarts == 3, lines
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.4  # 0.2 s, then capped at 0.4 s


def test_no_restart_policy_leaves_a_crashed_component_down(tmp_path: Path) -> None:
    stack = Stack([Component("crasher", CRASH)], tmp_path, RestartPolicy(enabled=False), _quiet([]))
    stack.start()
    proc = stack.comps[0].process
    assert proc is not None
    proc.wait()
    for _ in range(5):
        assert not stack.supervise()
        time.sleep(0.05)
    assert stack.comps[0].restarts == 0


def test_stop_is_bounded_when_a_child_ignores_sigterm(tmp_path: Path) -> None:
    stack = Stack([Component("router", STUBBORN), Component("kvstore-master", STUBBORN)], tmp_path, say=_quiet([]))
    stack.start()
    deadline = time.monotonic() + 20  # wait until both installed their SIG_IGN
    while time.monotonic() < deadline and not all("up" in (tmp_path / f"{c.name}.log").read_text() for c in stack.comps):
        time.sleep(0.05)
    start = time.monotonic()
    stack.stop(grace_s=1.0)
    assert time.monotonic() - start < 4.0
    assert all(c.process is not None and c.process.returncode == -signal.SIGKILL for c in stack.comps)


def test_children_die_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    script = (
        "import sys, time; from pathlib import Path; from splitserve.supervisor import Component, Stack; "
        f"s = Stack([Component('child', [sys.executable, '-c', 'import time; time.sleep(60)'])], Path({str(tmp_path)!r})); "
        f"s.start(); Path({str(tmp_path / 'pid')!r}).write_text(str(s.comps[0].process.pid)); time.sleep(60)"
    )  # fmt: skip
    parent = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ))
    pid_file = tmp_path / "pid"
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists()  # reaped by init at once: it was SIGKILLed by the kernel


def test_a_components_own_environment_reaches_it_and_no_other(tmp_path: Path) -> None:
    show = [
        sys.executable,
        "-c",
        "import os; print('share=' + os.environ.get('CUDA_MPS_ACTIVE_THREAD_PERCENTAGE', '-'), flush=True)",
    ]
    stack = Stack(
        [Component("capped", show, env={"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50"}), Component("plain", show)],
        tmp_path,
        RestartPolicy(enabled=False),
        _quiet([]),
    )
    stack.start()
    for comp in stack.comps:
        assert comp.process is not None
        comp.process.wait(timeout=30)
    stack.stop(5)
    assert (tmp_path / "capped.log").read_text().strip() == "share=50"
    assert (tmp_path / "plain.log").read_text().strip() == "share=-"
