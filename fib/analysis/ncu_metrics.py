"""The Nsight Compute metrics fib asks for, by role: shared by the capture (fib.profile.ncu) and the reader."""
from __future__ import annotations

# role -> candidate metrics (full names with rollup and submetric), the first available wins;
# tensor_pct takes every available candidate and keeps the largest (wgmma and mma.sync run on
# different pipes of the same tensor cores, and a kernel uses one or the other).
CORE_METRICS = {
    "duration": ["gpu__time_duration.sum"],
    "dram_pct": ["dram__throughput.avg.pct_of_peak_sustained_elapsed"],
    "sm_pct": ["sm__throughput.avg.pct_of_peak_sustained_elapsed"],
    "occupancy_pct": ["sm__warps_active.avg.pct_of_peak_sustained_active"],
    "registers": ["launch__registers_per_thread"],
    "block_threads": ["launch__block_size"],
    "grid_blocks": ["launch__grid_size"],
}
OPTIONAL_METRICS = {
    "tensor_pct": ["sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active",
                   "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
                   "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active",
                   "sm__inst_executed_pipe_tensor.avg.pct_of_peak_sustained_active"],
    "mem_pct": ["gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed"],
    "l2_pct": ["lts__throughput.avg.pct_of_peak_sustained_elapsed"],
    "dram_bytes": ["dram__bytes.sum"],
    "occupancy_theoretical_pct": ["sm__maximum_warps_per_active_cycle_pct"],
    "limit_registers": ["launch__occupancy_limit_registers"],
    "limit_shared_mem": ["launch__occupancy_limit_shared_mem"],
    "limit_warps": ["launch__occupancy_limit_warps"],
    "limit_blocks": ["launch__occupancy_limit_blocks"],
}
MULTI_CANDIDATE_ROLES = {"tensor_pct"}
METRIC_ROLES = {**CORE_METRICS, **OPTIONAL_METRICS}
