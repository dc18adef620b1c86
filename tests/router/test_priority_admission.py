"""The router's SLO admission and request priority (lower value = more urgent, vLLM's convention)."""

import pytest

from kvstore.block_key import block_keys
from router.prefix_index import PrefixIndex
from router.scheduler import AdmissionRejected, Scheduler, SchedulerConfig, ScheduleRequest
from router.workers import Role, Worker, WorkerLoad

BS = 16
PROMPT = list(range(2048))


def overloaded() -> tuple[list[Worker], list[Worker]]:
    def worker(addr: str, role: Role, queued: int) -> Worker:
        return Worker(addr, role, WorkerLoad(worker_id=addr, role=role.value, total_kv_blocks=1000,
                                             queued_prefill_tokens=queued))  # fmt: skip

    return [worker("p1", Role.PREFILL, 40_000)], [worker("d1", Role.DECODE, 30_000)]


@pytest.mark.parametrize("priority", [0, 5])
def test_default_and_lower_priority_requests_are_shed_when_the_slo_cannot_be_met(priority):
    sched = Scheduler(SchedulerConfig(ttft_slo_ms=500, default_prefill_rate_tps=10_000), PrefixIndex())
    with pytest.raises(AdmissionRejected):
        sched.decide(ScheduleRequest(len(PROMPT), block_keys(PROMPT, "fp", BS), BS, priority), *overloaded())


def test_an_urgent_request_is_placed_as_if_there_were_no_slo_instead_of_a_429():
    urgent = ScheduleRequest(len(PROMPT), block_keys(PROMPT, "fp", BS), BS, priority=-1)
    with_slo = Scheduler(SchedulerConfig(ttft_slo_ms=500, default_prefill_rate_tps=10_000), PrefixIndex())
    without = Scheduler(SchedulerConfig(default_prefill_rate_tps=10_000), PrefixIndex())
    decision, expected = with_slo.decide(urgent, *overloaded()), without.decide(urgent, *overloaded())
    assert (decision.mode, decision.prefill_worker, decision.decode_worker) == (
        expected.mode,
        expected.prefill_worker,
        expected.decode_worker,
    )
    assert decision.predicted_ttft_s > 0.5  # it waits in a queue past the SLO rather than being turned away
