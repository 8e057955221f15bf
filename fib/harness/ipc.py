"""CUDA tensors between a worker and the judge without a host copy: torch's CUDA IPC handle fields as
plain JSON (bytes in base64). The worker shares its outputs, the judge maps them while the worker
waits for the verdict (worker.save_outputs, judge.judge)."""
from __future__ import annotations


def share_cuda_tensor(tensor) -> dict:
    """A plain CUDA tensor as a CUDA IPC handle another process on this machine can map: the fields
    of torch's own reduction (torch.multiprocessing.reductions), as JSON (bytes in base64). No pickle:
    the judge must not run anything a solution's process sends it; `open_cuda_tensor` rebuilds from
    these fields alone, with classes and dtypes from fixed lists."""
    import base64
    import torch
    from torch.multiprocessing.reductions import rebuild_cuda_tensor, reduce_tensor
    if type(tensor) is not torch.Tensor:
        raise TypeError(f"a {type(tensor).__name__} is not shared over IPC (plain tensors only)")
    rebuild, fields = reduce_tensor(tensor)
    if rebuild is not rebuild_cuda_tensor:
        raise TypeError("not a CUDA tensor")
    (_, size, stride, offset, storage_cls, dtype, device, handle, size_bytes, offset_bytes, _grad,
     counter_handle, counter_offset, event_handle, event_sync) = fields

    def b64(value):
        return None if value is None else base64.b64encode(bytes(value)).decode("ascii")
    return {"size": list(size), "stride": list(stride), "offset": int(offset), "storage": storage_cls.__name__,
            "dtype": str(dtype).removeprefix("torch."), "device": int(device), "handle": b64(handle),
            "size_bytes": int(size_bytes), "offset_bytes": int(offset_bytes),
            "counter_handle": b64(counter_handle), "counter_offset": int(counter_offset),
            "event_handle": b64(event_handle), "event_sync": bool(event_sync)}


def open_cuda_tensor(shared: dict):
    """The tensor a `share_cuda_tensor` handle names, mapped into this process (no copy)."""
    import base64
    import torch
    from torch.multiprocessing.reductions import rebuild_cuda_tensor
    storages = {"TypedStorage": torch.storage.TypedStorage, "UntypedStorage": torch.UntypedStorage}
    dtype = getattr(torch, str(shared["dtype"]), None)
    if not isinstance(dtype, torch.dtype) or shared["storage"] not in storages:
        raise ValueError(f"not a tensor handle: dtype {shared['dtype']!r}, storage {shared['storage']!r}")

    def raw(value):
        return None if value is None else base64.b64decode(str(value))
    return rebuild_cuda_tensor(torch.Tensor, torch.Size([int(x) for x in shared["size"]]),
                               tuple(int(x) for x in shared["stride"]), int(shared["offset"]),
                               storages[shared["storage"]], dtype, int(shared["device"]), raw(shared["handle"]),
                               int(shared["size_bytes"]), int(shared["offset_bytes"]), False,
                               raw(shared["counter_handle"]), int(shared["counter_offset"]),
                               raw(shared["event_handle"]), bool(shared["event_sync"]))
