"""`splitserve up --kvstore-backend mooncake` serves the demo with KV carried by a real Mooncake Store.

One stack: `mooncake_master` + one `mooncake_client` memory node (from the mooncake wheel) in place of
our store, 1 prefill + 1 decode worker with --kv-transport store (no direct pull: every KV block goes
through Mooncake), and a router that sends every request through the prefill worker
(--colocate-threshold 0). The answer must equal the offline engine's, and the decode worker must have
read its KV from the store while Mooncake's master holds the blocks.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_stack import Proc, start_up, wait_until
from realmodel_prompts import NEW_TOKENS, chat

from contracts.sampling import SamplingParams
from engine.llm import LLM
from router.tokenization import PromptTokenizer

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"  # the demo's question (splitserve/up.py)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, dict[str, Any]]]:
    logs = tmp_path_factory.mktemp("smollm2-mooncake")
    up, state = start_up("smollm2", logs, "--kvstore-backend", "mooncake", "--kvstore-capacity", "64MiB",
                         "--kv-transport", "store", "--prefill", "1", "--decode", "1", "--colocate-threshold", "0",
                         "--demo-request")  # fmt: skip
    try:
        yield up, state
    finally:
        up.stop(grace_s=40)


def scrape(address: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric ``name`` whose labels include ``labels``, at http://address/metrics."""
    total = 0.0
    for line in httpx.get(f"http://{address}/metrics", timeout=5).text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_up_with_mooncake_answers_the_demo_with_kv_through_mooncake(stack, smollm2_dir: Path) -> None:
    up, state = stack
    assert state["kvstore"].startswith("mooncake://") and state["kvstore_events"] == ""
    # --demo-request asks once the state file is written
    wait_until(lambda: f"{QUESTION} -> " in up.tail(20000), 120, "the demo request answered", up)
    demo = up.tail(20000)
    assert re.search(r"capital of France\? -> '.*Paris", demo), demo  # `make demo`'s request, through Mooncake

    prompt = PromptTokenizer.from_dir(smollm2_dir).apply_chat_template(chat(QUESTION))
    llm = LLM(str(smollm2_dir), device="cpu", kv_cache_bytes=64 << 20)
    try:
        [offline] = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))
    finally:
        llm.engine.shutdown()
    decode_metrics = state["metrics"]["decode-0"]
    read_before = scrape(decode_metrics, "splitserve_worker_kv_transfer_bytes_total", transport="store", direction="in")
    body = {"model": "default", "messages": chat(QUESTION), "max_tokens": NEW_TOKENS, "temperature": 0,
            "ignore_eos": True, "logprobs": True, "return_tokens_as_token_ids": True}  # fmt: skip
    reply = httpx.post(f"{state['url']}/v1/chat/completions", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    tokens = [int(t["token"].removeprefix("token_id:")) for t in reply.json()["choices"][0]["logprobs"]["content"]]
    assert tokens == offline.output_token_ids

    # the decode worker read this request's KV from the store, and the store is Mooncake's
    assert scrape(decode_metrics, "splitserve_worker_kv_transfer_bytes_total", transport="store", direction="in") > read_before
    master_metrics = state["metrics"]["kvstore-master"]
    assert scrape(master_metrics, "master_key_count") > 0
    assert scrape(master_metrics, "master_allocated_bytes") > 0
    # Mooncake announces nothing: the prefill worker announced its writes, and the router filed them under the store tier
    assert scrape(state["metrics"]["router"], "splitserve_router_index_store_tier_blocks") > 0
