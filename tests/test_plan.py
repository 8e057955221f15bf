"""A bare `fib run` on a CPU leaves out the full-size definitions, and says why."""
from __future__ import annotations

from fib.cli.app import _leave_out_full_size
from fib.dataset import load_dataset
from fib.harness.plan import input_bytes

DS = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"
DEMO = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e8_h512_i256"


def test_input_bytes_from_declared_shapes():
    data = load_dataset()
    d = data.definitions[DS]
    w = next(w for w in data.workloads[DS] if w.axes.get("seq_len") == 1)
    # the FP8 expert stacks alone: 32 x (4096 x 7168 + 7168 x 2048) bytes
    assert input_bytes(d, d.resolve_axes(w.axes)) > 32 * (4096 * 7168 + 7168 * 2048)
    assert input_bytes(d, d.resolve_axes(w.axes)) < 1.5 * 2**30


def test_bare_cpu_run_keeps_only_the_demo(capsys):
    data = load_dataset()
    names = sorted(data.definitions)
    works = {n: [w.uuid for w in data.workloads.get(n, [])] for n in names}
    kept = _leave_out_full_size(data, names, works)
    assert kept == [DEMO]
    err = capsys.readouterr().err
    assert DS in err and "--definitions" in err
