"""Workers and requests for scheduler tests: a worker with a 1,000-block KV cache and the given load,
and a request whose block keys are those of its tokens (16-token blocks)."""

from kvstore.block_key import block_keys
from router.scheduler import ScheduleRequest
from router.workers import Role, Worker, WorkerLoad

BS = 16


def worker(addr: str, role: Role, **load) -> Worker:
    return Worker(addr, role, WorkerLoad(worker_id=addr, role=role.value, total_kv_blocks=1000, **load))


def request(tokens: list[int]) -> ScheduleRequest:
    return ScheduleRequest(len(tokens), block_keys(tokens, "fp", BS), BS)
