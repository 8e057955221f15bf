"""Kernel attribution from nsys SQLite exports: synthetic (exact sums) and a real H200 capture."""
import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

from fib.analysis.attribution import StageRules, open_ranges_at_launches, parse_call_range
from fib.analysis.nsys_sqlite import load_sqlite
from fib.analysis.tables import infer_calls, kernel_table, leftout_table, stage_table
from fib.profile.verify import compare, inclusive_totals, read_nvtx_kern_sum

FIX = Path(__file__).parent / "fixtures" / "profile"
spec = importlib.util.spec_from_file_location("make_nsys_fixture", FIX / "make_nsys_fixture.py")
maker = importlib.util.module_from_spec(spec)
sys.modules["make_nsys_fixture"] = maker
spec.loader.exec_module(maker)

RULES = StageRules.from_stages([{"name": "routing", "kernels": ["sort"]},
                                {"name": "finalize", "kernels": ["reduce_kernel"]}])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    # rebuilt from the script so the committed file and the maker cannot drift apart
    path = maker.synthetic(tmp_path_factory.mktemp("nsys") / "synthetic.sqlite")
    return load_sqlite(path, RULES)


def test_committed_fixture_matches_maker(synthetic):
    committed, _ = load_sqlite(FIX / "synthetic.sqlite", RULES)
    assert committed.drop(columns="ranges").equals(synthetic[0].drop(columns="ranges"))


def test_stage_totals_equal_hand_sums(synthetic):
    instances, _ = synthetic
    pipe = instances[instances["category"] == "pipeline"]
    got = pipe.groupby(["solution", "workload", "stage"])["duration_ns"].sum().to_dict()
    assert got == maker.EXPECTED


def test_innermost_range_wins_and_sources(synthetic):
    instances, _ = synthetic
    gemm = instances[instances["kernel_full"] == maker.GEMM1_A]
    assert set(gemm["stage"]) == {"gemm1"}            # not the enclosing 'experts'
    assert set(gemm["ranges"]) == {"fib.call/sol_a/W16 > experts > gemm1"}
    final = instances[(instances["kernel_full"] == maker.FINAL) & (instances["category"] == "pipeline")]
    assert set(final["stage_source"]) == {"regex"} and set(final["stage"]) == {"finalize"}
    mystery = instances[instances["kernel_full"] == maker.MYSTERY]
    assert set(mystery["stage"]) == {"other"} and set(mystery["stage_source"]) == {"other"}
    # a range with its name in `text` (not registered through textId) counts the same
    assert instances.loc[instances["kernel_full"] == maker.ACT, "stage"].eq("activation").all()


def test_harness_and_outside_kernels_are_left_out(synthetic):
    instances, _ = synthetic
    harness = instances[instances["category"] == "harness"]
    assert harness.groupby("harness")["duration_ns"].sum().to_dict() == maker.HARNESS_EXPECTED
    assert harness["stage"].isna().all()
    outside = instances[instances["category"] == "outside"]
    assert outside["duration_ns"].sum() == maker.OUTSIDE_EXPECTED
    left = leftout_table(instances)
    assert left.groupby("range")["total_ms"].sum().to_dict() == pytest.approx(
        {"reference": 0.070, "check": 0.007, "(outside calls)": 0.0009})


def test_tables_per_call(synthetic):
    instances, calls = synthetic
    assert calls.set_index(["solution", "workload"])["calls"].to_dict() == {
        ("sol_a", "W16"): 2, ("sol_a", "W256"): 1, ("sol_b", "W16"): 2, ("sol_b", "W256"): 1}
    kernels = kernel_table(instances, calls, {"W16": {"seq_len": 16}, "W256": {"seq_len": 256}})
    stages = stage_table(kernels).set_index(["solution", "workload", "stage"])
    assert stages.loc[("sol_a", "W16", "gemm1"), "per_call_us"] == pytest.approx(5.0)
    assert stages.loc[("sol_a", "W16", "gemm1"), "total_ms"] == pytest.approx(0.010)
    assert stages.loc[("sol_b", "W16", "routing"), "per_call_us"] == pytest.approx(1.6)
    assert stages.loc[("sol_b", "W16", "routing"), "instances"] == 4
    row = kernels[(kernels["solution"] == "sol_a") & (kernels["workload"] == "W256") & (kernels["stage"] == "gemm1")]
    assert row["tile"].tolist() == ["128x64x128"] and row["tokens"].tolist() == [256]
    assert row["per_call"].tolist() == [1.0]


def test_sweep_handles_overlap_ties_and_threads():
    ranges = [(1, 0, 100, "fib.call/s/w"), (1, 10, 20, "a"), (1, 20, 30, "b"), (2, 0, 100, "z")]
    launches = [(1, 20), (1, 25), (1, 100), (1, 101), (None, None), (2, 5)]
    stacks = open_ranges_at_launches(ranges, launches)
    assert stacks[0] == ("fib.call/s/w", "a", "b")  # both ends inclusive at t=20
    assert stacks[1] == ("fib.call/s/w", "b")
    assert stacks[2] == ("fib.call/s/w",) and stacks[3] == () and stacks[4] == () and stacks[5] == ("z",)
    assert parse_call_range("fib.call/my/sol/uuid-1") == ("my/sol", "uuid-1")
    assert parse_call_range("gemm1") is None


def test_infer_calls_without_call_ranges():
    inst = pd.DataFrame({"solution": ["x"] * 5, "workload": ["(all)"] * 5, "category": ["pipeline"] * 5,
                         "kernel_full": ["k1", "k1", "k1", "k2", "k2"]})
    assert infer_calls(inst)["calls"].tolist() == [3]


def test_real_h200_export_matches_nsys_nvtx_kern_sum():
    """Committed capture of `fib profile --demo` on an H200 and nsys's own report of it."""
    instances, calls = load_sqlite(FIX / "h200_demo.sqlite")
    table = compare(inclusive_totals(instances), read_nvtx_kern_sum(FIX / "h200_demo_nvtx_kern_sum.csv"))
    assert table["ok"].all(), table
    assert len(table) == 12 and table["rel_diff"].max() == 0
    assert set(calls["calls"]) == {5}
    routing = instances[(instances["stage"] == "routing")]["duration_ns"].sum()
    assert routing == 434719  # = the five routing rows of nvtx_kern_sum


def test_verify_flags_a_mismatch():
    ours = pd.DataFrame({"range": ["gemm1", "routing"], "instances": [1, 1], "total_ns": [100, 200]})
    theirs = pd.DataFrame({"range": ["gemm1", "routing"], "instances": [1, 1], "total_ns": [100.5, 230]})
    table = compare(ours, theirs).set_index("range")
    assert bool(table.loc["gemm1", "ok"]) and not bool(table.loc["routing", "ok"])
