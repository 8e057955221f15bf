"""What a device is: the facts `target_hardware` and `fib_supported` hooks are matched against,
and what the environment records about a GPU."""
from __future__ import annotations

from typing import Any


def device_info(device: str) -> dict[str, Any]:
    """What `target_hardware` and `fib_supported` hooks are matched against."""
    import torch
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        return {"type": "cuda", "device": device, "name": props.name, "sm": props.major * 10 + props.minor,
                "memory_gb": round(props.total_memory / 2**30, 1), "sm_count": props.multi_processor_count}
    return {"type": "cpu", "device": "cpu", "name": "cpu", "sm": None}
