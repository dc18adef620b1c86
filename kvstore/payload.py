"""Views of what callers put and read into: bytes, memoryview, numpy arrays, torch tensors.

Every payload becomes a flat uint8 memoryview without a copy when its memory is
contiguous on the host; a device tensor is staged through host memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Payload = Any  # bytes | bytearray | memoryview | np.ndarray | torch.Tensor


def _is_tensor(value: object) -> bool:
    return type(value).__module__.startswith("torch")


def readable_view(value: Payload) -> memoryview:
    """Flat byte view of a payload (copies only a non-contiguous or device tensor)."""
    if _is_tensor(value):
        t = value.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        return memoryview(t.view(__import__("torch").uint8).numpy())
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value).reshape(-1).view(np.uint8).data
    return memoryview(value).cast("B")


class DestinationBuffer:
    """Where get_into writes one object: host memory directly, a device tensor after staging."""

    def __init__(self, value: Payload) -> None:
        self._device_tensor = None
        if _is_tensor(value):
            torch = __import__("torch")
            if value.device.type == "cpu" and value.is_contiguous():
                self.view = memoryview(value.reshape(-1).view(torch.uint8).numpy())
            else:
                self._device_tensor = value
                self.view = memoryview(bytearray(value.numel() * value.element_size()))
        elif isinstance(value, np.ndarray):
            if not value.flags.c_contiguous or not value.flags.writeable:
                raise ValueError("get_into needs a writable C-contiguous numpy array")
            self.view = value.reshape(-1).view(np.uint8).data
        else:
            view = memoryview(value)
            if view.readonly:
                raise ValueError("get_into needs a writable buffer (bytearray, numpy array, tensor), not a read-only one")
            self.view = view.cast("B")

    def finish(self) -> None:
        """Move staged bytes to the device tensor, if there is one."""
        if self._device_tensor is not None:
            torch = __import__("torch")
            host = torch.frombuffer(self.view, dtype=torch.uint8)
            self._device_tensor.view(-1).view(torch.uint8).copy_(host)

    def as_array(self) -> np.ndarray:
        return np.frombuffer(self.view, dtype=np.uint8)
