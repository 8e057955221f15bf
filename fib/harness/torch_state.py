"""Global torch state a solution may change (default dtype, grad mode, flush-denormal, deterministic
algorithms, matmul precision, default device, RNG), captured once and put back before each workload,
so what one workload's call did cannot change how the next one is prepared or called. Other
solutions and the reference never share the process at all."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TorchState:
    default_dtype: torch.dtype
    grad_enabled: bool
    deterministic: bool
    deterministic_warn_only: bool
    matmul_precision: str
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    tf32_matmul: bool
    tf32_cudnn: bool
    default_device: str | None

    @classmethod
    def capture(cls) -> "TorchState":
        get_device = getattr(torch, "get_default_device", None)
        return cls(default_dtype=torch.get_default_dtype(), grad_enabled=torch.is_grad_enabled(),
                   deterministic=torch.are_deterministic_algorithms_enabled(),
                   deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
                   matmul_precision=torch.get_float32_matmul_precision(),
                   cudnn_benchmark=torch.backends.cudnn.benchmark,
                   cudnn_deterministic=torch.backends.cudnn.deterministic,
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                   default_device=str(get_device()) if get_device else None)

    def restore(self, seed: int = 0) -> None:
        torch.set_default_dtype(self.default_dtype)
        torch.set_grad_enabled(self.grad_enabled)
        # Only what changed is set: the first use_deterministic_algorithms call costs about a second,
        # and set_default_device installs a function mode that slows every later tensor factory call.
        if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) \
                != (self.deterministic, self.deterministic_warn_only):
            torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)
        torch.set_float32_matmul_precision(self.matmul_precision)
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cuda.matmul.allow_tf32 = self.tf32_matmul
        torch.backends.cudnn.allow_tf32 = self.tf32_cudnn
        torch.set_flush_denormal(False)
        get_device = getattr(torch, "get_default_device", None)
        if self.default_device is not None and get_device is not None and str(get_device()) != self.default_device:
            torch.set_default_device(self.default_device)
        torch.manual_seed(seed)
