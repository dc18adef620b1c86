"""Sampled token ids to the host without blocking the stream: pinned buffers and an event per step.

``tensor.tolist()`` on a CUDA tensor is a synchronous, pageable copy: it waits for every
kernel queued on the stream, including a next step already launched behind it. ``start``
queues the copy right after sampling and records an event; ``wait`` blocks on that event
only. Two buffers alternate, so two steps may be in flight (LLMEngine's run-ahead).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class PendingTokens:
    host: torch.Tensor  # [S] int64: pinned (filled once ``event`` completes) or the device tensor itself
    event: torch.cuda.Event | None


class TokenReadback:
    NUM_BUFFERS = 2

    def __init__(self, device: torch.device, max_rows: int) -> None:
        self.cuda = device.type == "cuda"
        self._buffers = (
            [torch.empty(max_rows, dtype=torch.long, pin_memory=True) for _ in range(self.NUM_BUFFERS)] if self.cuda else []
        )
        self._events = [torch.cuda.Event() for _ in self._buffers]
        self._next = 0

    def start(self, token_ids: torch.Tensor) -> PendingTokens:  # [S] int64 on the device
        if not self.cuda or not token_ids.is_cuda or token_ids.numel() > self._buffers[0].numel():
            return PendingTokens(token_ids, None)  # read synchronously by ``wait``
        i, self._next = self._next, (self._next + 1) % self.NUM_BUFFERS
        host = self._buffers[i][: token_ids.numel()]
        host.copy_(token_ids, non_blocking=True)
        self._events[i].record()
        return PendingTokens(host, self._events[i])

    @staticmethod
    def wait(pending: PendingTokens) -> list[int]:
        if pending.event is not None:
            pending.event.synchronize()
        return pending.host.tolist()
