"""The L2 flush before every call: a read of twice the L2 (a read, not a fill: see fib.timing.measure)."""
from __future__ import annotations

from typing import Callable

FLUSH_RANGE = "fib.l2_flush"
_DEFAULT_FLUSH_BYTES = 256 * 1024 * 1024  # when the driver reports no L2 size


def l2_flush_bytes(device) -> int:
    """Bytes a flush must touch on `device`: twice its L2 (0 on CPU: fib does not flush CPU caches)."""
    import torch
    dev = torch.device(device)
    if dev.type != "cuda":
        return 0
    l2 = int(getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 0) or 0)
    return 2 * l2 if l2 > 0 else _DEFAULT_FLUSH_BYTES


def make_flush_buffer(device):
    """The flush buffer (float32, ones, `l2_flush_bytes` long), allocated once; None on CPU."""
    import torch
    n_bytes = l2_flush_bytes(device)
    if n_bytes == 0:
        return None
    return torch.ones(n_bytes // 4, dtype=torch.float32, device=device)


def flusher(buffer) -> Callable[[], None]:
    import torch
    out = torch.empty((), dtype=buffer.dtype, device=buffer.device)

    def flush() -> None:
        torch.sum(buffer, dim=0, out=out)  # a read of 2x L2: evicts everything, leaves clean lines
    return flush
