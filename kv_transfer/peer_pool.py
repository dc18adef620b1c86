"""Share a KV pool with other processes on the same host, and map a peer's pool.

A pool is one tensor [L, 2, N, B, Hkv, D] (engine/kv_cache.py). On CUDA it is shared by a CUDA
IPC memory handle (the handle torch.multiprocessing uses, taken apart into plain fields so it
travels in msgpack, never pickle); on CPU the pool lives in a shared-memory file that the
peer maps. Either way the reader copies blocks out of the peer's memory with no host staging.

A descriptor names its host (boot id + host name), so a reader on another host never tries;
a mapping is opened once per (peer, epoch) and replaced when the peer restarts.
"""

from __future__ import annotations

import glob
import os
import socket
import threading

import msgspec
import torch
from torch.multiprocessing.reductions import rebuild_cuda_tensor, reduce_tensor

from contracts.kv_handle import PoolDescriptor

SHM_DIR = "/dev/shm"
SHM_PREFIX = "splitserve-kvpool-"


class PeerPoolUnavailable(RuntimeError):
    """A peer's KV pool cannot be mapped here (other host or device, or the peer is gone)."""


def host_identity() -> str:
    """Same value in every process of one boot of one machine (and different elsewhere)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "unknown-boot"
    return f"{socket.gethostname()}/{boot}"


def device_identity(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return str(torch.cuda.get_device_properties(device).uuid)


def parse_descriptor(data: bytes) -> PoolDescriptor:
    try:
        return PoolDescriptor.decode(data)
    except msgspec.DecodeError as exc:
        raise PeerPoolUnavailable(f"malformed KV pool descriptor: {exc}") from exc


def shm_pool_path(worker_id: str, epoch: str) -> str:
    """Where a CPU engine's shareable pool lives; the pid lets a later start remove a crashed owner's file."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in worker_id)
    return os.path.join(SHM_DIR, f"{SHM_PREFIX}{os.getpid()}-{safe}-{epoch}")


def remove_orphaned_pools() -> int:
    """Delete pool files whose owning process is gone (a worker killed before its cleanup)."""
    removed = 0
    for path in glob.glob(os.path.join(SHM_DIR, SHM_PREFIX + "*")):
        pid = os.path.basename(path).removeprefix(SHM_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            try:
                os.unlink(path)
                removed += 1
            except OSError:
                pass
    return removed


def describe_pool(pool: torch.Tensor, shm_file: str | None) -> PoolDescriptor:
    """What a peer needs to map ``pool`` (call once, in the process that owns it)."""
    dtype = str(pool.dtype).removeprefix("torch.")
    host, shape = host_identity(), list(pool.shape)
    if pool.device.type == "cuda":
        _, args = reduce_tensor(pool)
        # (tensor_cls, size, stride, offset, storage_cls, dtype, device, handle, size_bytes, offset_bytes,
        #  requires_grad, ref_counter_handle, ref_counter_offset, event_handle, event_sync_required)
        fields = [
            list(args[1]),
            list(args[2]),
            args[3],
            args[6],
            args[7],
            args[8],
            args[9],
            args[10],
            args[11],
            args[12],
            args[13],
            args[14],
        ]
        return PoolDescriptor(host, device_identity(pool.device), shape, dtype, os.getpid(), cuda_ipc=fields)
    if not shm_file:
        raise ValueError("a CPU KV pool is shareable only when it is file-backed (EngineConfig.kv_pool_file)")
    return PoolDescriptor(host, "cpu", shape, dtype, os.getpid(), shm_file=shm_file)


def _local_cuda_device(uuid: str) -> int:
    for i in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(i).uuid) == uuid:
            return i
    raise PeerPoolUnavailable(f"the peer's GPU {uuid} is not visible to this process")


def open_pool(desc: PoolDescriptor, local_device: torch.device) -> torch.Tensor:
    """Map a peer's pool into this process; raises PeerPoolUnavailable when it cannot be reached."""
    if desc.host != host_identity():
        raise PeerPoolUnavailable(f"the peer's KV pool is on another host ({desc.host})")
    dtype = getattr(torch, desc.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise PeerPoolUnavailable(f"unknown dtype {desc.dtype!r} in a KV pool descriptor")
    if desc.cuda_ipc is not None:
        if local_device.type != "cuda":
            raise PeerPoolUnavailable("the peer's KV pool is on a GPU but this engine runs on the CPU")
        size, stride, offset, _dev, handle, size_b, offset_b, grad, rc_handle, rc_offset, ev, ev_sync = desc.cuda_ipc
        storage_cls = type(torch.empty(0, device=local_device).untyped_storage())
        try:
            return rebuild_cuda_tensor(
                torch.Tensor,
                tuple(size),
                tuple(stride),
                offset,
                storage_cls,
                dtype,
                _local_cuda_device(desc.device),
                handle,
                size_b,
                offset_b,
                grad,
                rc_handle,
                rc_offset,
                ev,
                ev_sync,
            )
        except RuntimeError as exc:
            raise PeerPoolUnavailable(f"opening the peer's CUDA IPC handle failed: {exc}") from exc
    if local_device.type != "cpu":
        raise PeerPoolUnavailable("the peer's KV pool is in host memory but this engine runs on a GPU")
    numel = 1
    for d in desc.shape:
        numel *= d
    if not os.path.exists(desc.shm_file) or os.path.getsize(desc.shm_file) < numel * dtype.itemsize:
        raise PeerPoolUnavailable(f"the peer's KV pool file {desc.shm_file} is gone (the peer stopped or restarted)")
    return torch.from_file(desc.shm_file, shared=True, size=numel, dtype=dtype).view(desc.shape)


def process_alive(pid: int) -> bool:
    """False once ``pid`` has exited, also while it is an unreaped zombie (signal 0 would still succeed)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class PeerPools:
    """Mapped peer pools, one per (peer, epoch). A new epoch of a peer replaces the old mapping, and
    the mapping of a peer whose process is gone is dropped (it would pin that whole pool's memory)."""

    def __init__(self, local_device: torch.device) -> None:
        self.local_device = local_device
        self._pools: dict[str, tuple[str, int, torch.Tensor]] = {}  # peer -> (epoch, owner pid, pool)
        self._lock = threading.Lock()  # maps are opened on transfer threads

    def get(self, peer: str, epoch: str, descriptor: bytes) -> torch.Tensor:
        desc = parse_descriptor(descriptor)
        if not process_alive(desc.owner_pid):
            self.prune()
            raise PeerPoolUnavailable(f"the peer {peer} that owns this KV pool exited (pid {desc.owner_pid})")
        with self._lock:
            known = self._pools.get(peer)
            if known is not None and known[0] == epoch:
                return known[2]
        pool = open_pool(desc, self.local_device)
        with self._lock:
            self._pools[peer] = (epoch, desc.owner_pid, pool)  # an older epoch's mapping goes with its last copy
        return pool

    def mapped(self, peer: str, epoch: str) -> bool:
        """Whether this epoch of ``peer``'s pool is mapped here already (``get`` then opens nothing)."""
        with self._lock:
            known = self._pools.get(peer)
            return known is not None and known[0] == epoch

    def prune(self) -> None:
        """Forget the mappings of peers whose process has exited."""
        with self._lock:
            for peer, (_, pid, _) in list(self._pools.items()):
                if not process_alive(pid):
                    del self._pools[peer]

    def __len__(self) -> int:
        return len(self._pools)
