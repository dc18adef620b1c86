"""A tensor-parallel engine across hosts (engine/remote_ranks.py), on CPU with gloo.

Host 1 is a `splitserve tp-ranks` process of its own, as the worker pod of a
LeaderWorkerSet group would run it; rank 0 is this test's engine (the leader). Both
meet only through the leader's address, as pods meet through the group's headless
Service, and the group gives the same tokens as one device.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from contracts.ports import free_port_pair
from contracts.sampling import SamplingParams
from engine.config import EngineConfig
from engine.executor import ParallelExecutor
from engine.llm import run_to_completion
from engine.llm_engine import LLMEngine
from engine.make_model import make_model
from engine.remote_ranks import (
    TOKEN_ENV,
    RankGroupError,
    accept_remote_ranks,
    join_leader,
)

PROMPTS = [[(7 * i + 3) % 370 + 5 for i in range(45)], [100, 3, 77]]
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


def generate(engine: LLMEngine, prompts: list[list[int]] = PROMPTS) -> list[list[int]]:
    return [out.output_token_ids for out in run_to_completion(engine, prompts, GREEDY)]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(model_dir=tmp_path_factory.mktemp("mn") / "llama", arch="llama", seed=3)


def test_a_tp2_engine_over_two_hosts_gives_the_tokens_of_one_device(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "group-secret")
    expected = generate(LLMEngine(EngineConfig(model=str(model), dtype="float32", kv_cache_bytes=4 << 20)))
    port = free_port_pair()
    node = subprocess.Popen(
        [sys.executable, "-m", "splitserve.cli", "tp-ranks", "--dist-addr", "127.0.0.1", "--dist-port", str(port),
         "--tensor-parallel-size", "2", "--nnodes", "2", "--node-rank", "1"],
        env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    engine = None
    try:
        engine = LLMEngine(EngineConfig(model=str(model), dtype="float32", kv_cache_bytes=4 << 20,
                                        tensor_parallel_size=2, nnodes=2, dist_host="127.0.0.1", dist_port=port))  # fmt: skip
        assert isinstance(engine.runner, ParallelExecutor)
        assert engine.runner.world == 2 and engine.runner.ranks[0].rank == 1  # rank 1 is the other host's
        # scale-down: the whole group gets SIGTERM, but the leader still drains and needs its ranks
        node.send_signal(signal.SIGTERM)
        assert generate(engine) == expected
    finally:
        if engine is not None:
            engine.shutdown()
        try:
            out, _ = node.communicate(timeout=60)  # the leader's STOP ends the other host's ranks
        except subprocess.TimeoutExpired:
            node.kill()
            out, _ = node.communicate()
    assert node.returncode == 0, out.decode(errors="replace")[-3000:]


def test_a_rank_with_the_wrong_token_is_refused_and_the_leader_names_the_missing_rank(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port_pair()
    config = EngineConfig(model=str(model), tensor_parallel_size=4, nnodes=2, dist_port=port)
    monkeypatch.setenv(TOKEN_ENV, "right")
    leader_error: list[Exception] = []

    def leader() -> None:
        try:
            accept_remote_ranks(config, {0}, timeout_s=4)
        except RankGroupError as exc:
            leader_error.append(exc)

    thread = threading.Thread(target=leader)
    thread.start()
    for _ in range(100):  # listening = the leader has read its token
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port + 1)) == 0:
                break
        time.sleep(0.05)
    monkeypatch.setenv(TOKEN_ENV, "wrong")
    with pytest.raises(RankGroupError, match="refused"):
        join_leader("127.0.0.1", port, rank=2, timeout_s=10)
    thread.join(timeout=15)
    assert leader_error and "ranks [2, 3] did not join" in str(leader_error[0])


def test_multi_node_settings_that_cannot_work_are_rejected_up_front(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="multiple of nnodes"):
        EngineConfig(model=str(model), tensor_parallel_size=3, nnodes=2, dist_port=29500)
    with pytest.raises(ValueError, match="fixed dist_port"):
        EngineConfig(model=str(model), tensor_parallel_size=2, nnodes=2)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(RankGroupError, match=TOKEN_ENV):
        join_leader("127.0.0.1", 1, rank=1, timeout_s=1)
    result = subprocess.run([sys.executable, "-m", "splitserve.cli", "tp-ranks", "--dist-addr", "x", "--dist-port", "1",
                             "--tensor-parallel-size", "2", "--nnodes", "2", "--node-rank", "0"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode != 0 and "node rank 0 of 2 nodes" in result.stderr
