"""torch.profiler backend: a real H200 chrome trace of the demo, a hand-made one, and a CPU run."""
from pathlib import Path

import pytest

from fib.analysis.attribution import StageRules
from fib.profile.demo import DEMO_STAGES
from fib.analysis.torch_trace import attribute_events, load_torch_trace

FIX = Path(__file__).parent / "fixtures" / "profile"


def test_real_trace_matches_nsys_structure():
    instances, calls = load_torch_trace(FIX / "h200_demo_torch_trace.json.gz", StageRules.from_stages(DEMO_STAGES))
    assert set(calls["calls"]) == {3} and len(calls) == 6
    pipe = instances[instances["category"] == "pipeline"]
    per_call = pipe.groupby(["solution", "stage"]).size() / 9  # 3 workloads x 3 calls
    # the same kernels per call as the nsys capture of the same demo (h200_demo.sqlite)
    assert per_call["demo_a"].to_dict() == {"activation": 2, "finalize": 2, "gemm1": 1, "gemm2": 1,
                                            "other": 2, "routing": 3}
    assert per_call["demo_b"]["routing"] == 3
    a = pipe[(pipe["solution"] == "demo_a") & (pipe["workload"] == "demo-02048")]
    assert a.groupby("stage")["duration_ns"].sum()["gemm1"] == 78143
    assert set(a.loc[a["stage"] == "gemm2", "ranges"]) == {"fib.call/demo_a/demo-02048 > experts > gemm2"}
    harness = instances[instances["category"] == "harness"]
    assert len(harness) == 4 and set(harness["harness"]) == {"reference"}


def _x(cat, name, ts, dur, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "pid": 10, "tid": tid, "ts": ts, "dur": dur, "args": args}


def test_hand_made_events():
    events = [
        _x("user_annotation", "fib.call/s/w1", 0, 100),
        _x("user_annotation", "outer", 10, 50),
        _x("user_annotation", "inner", 20, 10),
        _x("cpu_op", "aten::mm", 21, 5),
        _x("cuda_runtime", "cudaLaunchKernel", 22, 1, correlation=7),
        _x("cuda_driver", "cuLaunchKernel", 40, 1, correlation=8),       # in 'outer' only
        _x("cuda_runtime", "cudaLaunchKernel", 90, 1, correlation=9),    # in the call, no stage
        _x("cuda_runtime", "cudaLaunchKernel", 150, 1, correlation=10),  # outside the call
        _x("kernel", "gemm_t128x64x128", 500, 2.5, tid=7, correlation=7, device=0, stream=7),
        _x("kernel", "triton_act", 503, 1.25, tid=7, correlation=8, device=0, stream=7),
        _x("kernel", "reduce_kernel", 505, 0.5, tid=7, correlation=9, device=0, stream=7),
        _x("kernel", "copy", 600, 4.0, tid=7, correlation=10, device=0, stream=7),
        {"ph": "f", "cat": "ac2g", "id": 7},
    ]
    inst, calls = attribute_events(events, StageRules.from_stages([{"name": "fin", "kernels": ["reduce"]}]))
    assert inst["stage"].tolist()[:3] == ["inner", "outer", "fin"] and inst["stage"].isna().tolist()[3]
    assert inst["category"].tolist() == ["pipeline"] * 3 + ["outside"]
    assert inst["duration_ns"].tolist() == [2500, 1250, 500, 4000]
    assert inst["tile"].tolist()[0] == "128x64x128"
    assert calls.to_dict("records") == [{"solution": "s", "workload": "w1", "calls": 1}]


def test_cpu_run_jobs_records_call_ranges(tmp_path):
    torch = pytest.importorskip("torch")
    from fib.profile.target import Job, run_jobs
    from fib.analysis.torch_trace import load_events
    from fib.stages import stage

    def fn():
        with stage("gemm1"):
            torch.ones(8, 8) @ torch.ones(8, 8)

    trace = tmp_path / "t.json"
    calls = run_jobs([Job("s", "w", fn, {"n": 8})], iterations=3, warmup=1, backend="torch",
                     device="cpu", trace=str(trace))
    assert calls == {("s", "w"): 3}
    names = [e["name"] for e in load_events(trace) if e.get("cat") == "user_annotation"]
    assert names.count("fib.call/s/w") == 3 and names.count("gemm1") == 3
