"""Measured roofs (copy bandwidth, matmul rate) for floor computations."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import TimingError
from .measure import event_times


def measure_ceilings(device, *, copy_bytes: int = 1 << 30, matmul_size: int = 8192,
                     repeats: int = 10) -> dict[str, Any]:
    """Measured roofs for floor computations: device-to-device copy bandwidth (GB/s, bytes read
    plus bytes written) and a large matmul's rate (TFLOP/s) per input dtype: FP8 e4m3 through
    torch._scaled_mm where the GPU has it, and bf16. `matmul_tflops` / `matmul_dtype` are FP8's where
    it ran, else bf16's; `matmul_tflops_by_dtype` holds each, so a floor whose FLOPs
    are BF16 is not put against the FP8 rate. Random data (zeros run faster). Median of `repeats`
    event-timed runs."""
    import torch
    dev = torch.device(device)
    if dev.type != "cuda":
        raise TimingError("measure_ceilings needs a CUDA device", fix="pass device='cuda:N'")
    with torch.cuda.device(dev):
        src = torch.randint(0, 255, (copy_bytes,), dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        copy_ms = _median_event_ms(lambda: dst.copy_(src), repeats)
        del src, dst
        n = matmul_size
        a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        rates = {"bf16": 2 * n ** 3 / _median_event_ms(lambda: a @ b, repeats) / 1e9}
        note = ""
        try:
            a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
            one = torch.ones((), device=dev, dtype=torch.float32)
            mm = lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one,  # noqa: E731
                                          out_dtype=torch.bfloat16)
            mm()
            rates["fp8_e4m3"] = 2 * n ** 3 / _median_event_ms(mm, repeats) / 1e9
        except Exception as exc:
            note = f"fp8 failed: {type(exc).__name__}: {exc}"
    dtype = "fp8_e4m3" if "fp8_e4m3" in rates else "bf16"
    return {"device": torch.cuda.get_device_name(dev),
            "copy_bytes": copy_bytes, "copy_ms": copy_ms, "copy_gbps": 2 * copy_bytes / copy_ms / 1e6,
            "matmul_size": n, "matmul_dtype": dtype, "matmul_ms": 2 * n ** 3 / rates[dtype] / 1e9,
            "matmul_tflops": rates[dtype], "matmul_tflops_by_dtype": rates, "matmul_note": note}


def _median_event_ms(fn: Callable[[], Any], repeats: int) -> float:
    import torch
    for _ in range(3):
        fn()
    return float(np.median(event_times(fn, lambda: None, repeats)))
