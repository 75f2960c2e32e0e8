"""Host -> device copies of a training step: once per step, from pinned memory, non-blocking.

On a CPU device every function here returns its input unchanged (no copy). On CUDA, the pulled
embedding rows are staged in a pinned host buffer that is reused from step to step (pinning a
fresh tensor every step costs a page-locking allocation), and copied with ``non_blocking=True`` so
the copy overlaps the host work that follows. Reusing the buffer is safe because every step ends
with ``float(loss)``, which waits for the device: no copy from the buffer is in flight when the
next step overwrites it.
"""
from __future__ import annotations

import torch

from distgnn.errors import UserError


def ray_worker_device(requested: str, gpus_per_worker: float) -> str:
    """The device type a Ray worker trains on, checked on the driver before Ray starts.

    GPUs requested (``--gpus-per-worker`` > 0): ``cuda`` (each worker then uses the GPU Ray gave
    it, and the process group is nccl); ``train.device: cpu`` with GPUs requested is a
    contradiction (nccl over CPU tensors cannot work). No GPUs requested: ``cpu`` (gloo), also
    for ``auto``, since a worker without a GPU of its own must not grab one of the node's."""
    req = requested.strip().lower()
    if gpus_per_worker > 0:
        if req == "cpu":
            raise UserError(f"train.device is 'cpu' but --gpus-per-worker {gpus_per_worker:g} requests "
                            f"GPUs; drop --gpus-per-worker, or set train.device=auto (or cuda)")
        return "cuda"
    if req.startswith("cuda"):
        raise UserError(f"train.device is {requested!r} but the Ray workers get no GPU; pass "
                        f"--gpus-per-worker 1 (or more), or set train.device=auto (or cpu)")
    return "cpu"


class HostToDevice:
    """Copies of one training process to ``device``; ``rows`` reuses a pinned staging buffer."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._pinned: torch.Tensor | None = None

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        """A small tensor (indices, edge weights): non-blocking copy, no staging."""
        if t.device == self.device:
            return t
        return t.to(self.device, non_blocking=self.cuda)

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """Pulled embedding rows [n, dim] (float32 on the host): staged in the pinned buffer."""
        if t.device == self.device:
            return t
        if not self.cuda or t.device.type != "cpu":
            return t.to(self.device)
        n = t.numel()
        if self._pinned is None or self._pinned.numel() < n or self._pinned.dtype != t.dtype:
            self._pinned = torch.empty(max(n, int(n * 1.25)), dtype=t.dtype, pin_memory=True)
        staged = self._pinned[:n].view(t.shape)
        staged.copy_(t)
        return staged.to(self.device, non_blocking=True)

    def blocks(self, blocks: list) -> list:
        """DGL blocks (graph structure and their ids) on the device."""
        if not self.cuda:
            return blocks
        return [b.to(self.device, non_blocking=True) for b in blocks]
