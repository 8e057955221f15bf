"""What a device is: the facts `target_hardware` and `fib_supported` hooks are matched against,
and what the environment records about a GPU.

The GPUs are read from the CUDA driver (libcuda, through ctypes) rather than through torch, so the
parent of a run knows its devices without importing torch (seconds on a GPU machine) before it
starts its workers; where libcuda cannot be loaded, torch answers (only where a ROCm driver is
present: otherwise there is no GPU torch could use).
"""
from __future__ import annotations

import ctypes
from functools import lru_cache
from typing import Any

_MAJOR, _MINOR, _SMS, _L2 = 75, 76, 16, 38  # CUdevice_attribute values (cuda.h)


@lru_cache(maxsize=1)
def libcuda():
    """The CUDA driver library (ctypes), or None where it cannot be loaded."""
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None


@lru_cache(maxsize=1)
def cuda_devices() -> tuple[dict[str, Any], ...] | None:
    """The visible CUDA devices as the driver lists them (CUDA_VISIBLE_DEVICES applies), or None
    when no driver can be loaded or initialised (then torch is asked)."""
    lib = libcuda()
    if lib is None:
        return None
    try:
        if lib.cuInit(0) != 0:
            return ()
        count = ctypes.c_int()
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return ()
        devices = []
        for index in range(count.value):
            dev = ctypes.c_int()
            lib.cuDeviceGet(ctypes.byref(dev), index)
            name = ctypes.create_string_buffer(256)
            lib.cuDeviceGetName(name, 256, dev)
            attrs = {}
            for key, attr in (("major", _MAJOR), ("minor", _MINOR), ("sm_count", _SMS), ("l2_bytes", _L2)):
                value = ctypes.c_int()
                lib.cuDeviceGetAttribute(ctypes.byref(value), attr, dev)
                attrs[key] = value.value
            memory = ctypes.c_size_t()
            lib.cuDeviceTotalMem_v2(ctypes.byref(memory), dev)
            devices.append({"name": name.value.decode(errors="replace"), "sm": attrs["major"] * 10 + attrs["minor"],
                            "memory_gb": round(memory.value / 2**30, 1), "sm_count": attrs["sm_count"],
                            "l2_bytes": attrs["l2_bytes"]})
        return tuple(devices)
    except (AttributeError, OSError):
        return None


def _torch_might_see_a_gpu() -> bool:
    """Without libcuda torch can reach a GPU only through ROCm (HIP), whose kernel driver is /dev/kfd;
    elsewhere the answer is no, without importing torch (over a second on a CPU machine)."""
    import os
    return os.path.exists("/dev/kfd")


def cuda_device_count() -> int:
    devices = cuda_devices()
    if devices is not None:
        return len(devices)
    if not _torch_might_see_a_gpu():
        return 0
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_info(device: str) -> dict[str, Any]:
    """What `target_hardware` and `fib_supported` hooks are matched against."""
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        devices = cuda_devices()
        if devices is not None and index < len(devices):
            return {"type": "cuda", "device": device, **devices[index]}
        import torch
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(index)
            return {"type": "cuda", "device": device, "name": props.name, "sm": props.major * 10 + props.minor,
                    "memory_gb": round(props.total_memory / 2**30, 1), "sm_count": props.multi_processor_count}
    return {"type": "cpu", "device": "cpu", "name": "cpu", "sm": None}
