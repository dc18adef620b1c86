"""The scheduler keeps each pool's load columns between decisions (router/pool_columns.py):
every change to a worker must still reach the next decision."""

from scheduler_support import request, worker

from router.prefix_index import PrefixIndex
from router.scheduler import Mode, Scheduler, SchedulerConfig
from router.workers import Role, Worker, WorkerLoad

PROMPT = list(range(4096))


def loaded(w: Worker, queued: int) -> WorkerLoad:
    return WorkerLoad(worker_id=w.address, role=w.role.value, total_kv_blocks=1000, queued_prefill_tokens=queued)


def test_a_polled_load_change_reaches_the_next_decision():
    sched = Scheduler(SchedulerConfig(), PrefixIndex())
    prefill = [worker("p1", Role.PREFILL), worker("p2", Role.PREFILL, queued_prefill_tokens=30_000)]
    decode = [worker("d1", Role.DECODE, queued_prefill_tokens=90_000)]
    first = sched.decide(request(PROMPT), prefill, decode)
    assert first.prefill_worker == "p1"
    assert first.charge is not None
    first.charge.release()
    prefill[0].update_load(loaded(prefill[0], 60_000))
    assert sched.decide(request(PROMPT), prefill, decode).prefill_worker == "p2"


def test_a_decision_charges_the_worker_it_chose_for_the_next_one():
    sched = Scheduler(SchedulerConfig(), PrefixIndex())
    prefill = [worker("p1", Role.PREFILL), worker("p2", Role.PREFILL)]
    decode = [worker("d1", Role.DECODE, queued_prefill_tokens=90_000)]
    prompts = [[i * 10_000 + t for t in PROMPT] for i in range(4)]  # distinct: none hits another in flight
    chosen = [sched.decide(request(p), prefill, decode).prefill_worker for p in prompts]
    assert sorted(chosen) == ["p1", "p1", "p2", "p2"]  # in-flight charges spread them


def test_a_worker_leaving_or_joining_the_pool_is_seen():
    sched = Scheduler(SchedulerConfig(), PrefixIndex())
    p1, p2 = worker("p1", Role.PREFILL), worker("p2", Role.PREFILL, queued_prefill_tokens=10_000)
    decode = [worker("d1", Role.DECODE, queued_prefill_tokens=90_000)]
    d = sched.decide(request(PROMPT), [p1, p2], decode)
    assert d.prefill_worker == "p1"
    d.charge.release()
    p1.healthy = False
    d = sched.decide(request(PROMPT), [p1, p2], decode)
    assert (d.mode, d.prefill_worker) == (Mode.DISAGGREGATED, "p2")
    d.charge.release()
    p3 = worker("p3", Role.PREFILL)
    assert sched.decide(request(PROMPT), [p2, p3], decode).prefill_worker == "p3"
