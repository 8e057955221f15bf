"""Outputs to the judge over CUDA IPC (fib.harness.ipc.share_cuda_tensor / open_cuda_tensor): the
handle is plain JSON the judge rebuilds from fixed classes (never a pickle a solution's process could
craft), a handle the judge cannot open asks for a file instead of failing the pair, and the worker then
sends the same outputs again as a file. The mapping itself needs a GPU (benchmarks/gpu_call_*.sh)."""
from __future__ import annotations

import json

import pytest
import torch

from fib.harness import ipc as ipc_mod
from fib.harness.judge import Judge
from fib.harness.ipc import open_cuda_tensor, share_cuda_tensor
from fib.harness.worker import SolutionWorker
from fib.schema import Definition, Workload
from tinydata import DEFINITION


def test_a_cpu_tensor_is_not_shared():
    with pytest.raises(TypeError, match="not a CUDA tensor"):
        share_cuda_tensor(torch.ones(3))


@pytest.mark.parametrize("bad", [{"dtype": "os.system", "storage": "TypedStorage"},
                                 {"dtype": "float32", "storage": "builtins.eval"}])
def test_a_handle_names_only_known_dtypes_and_storages(bad):
    with pytest.raises(ValueError, match="not a tensor handle"):
        open_cuda_tensor(bad)


def _judge(tmp_path) -> Judge:
    judge = Judge.__new__(Judge)
    judge.device = "cpu"
    judge.failed, judge.refs = {}, {"k": (tmp_path / "ref.safetensors", {"n": 3, "m": 4})}
    return judge


def test_the_judge_asks_for_a_file_when_it_cannot_map_the_outputs(tmp_path):
    definition = Definition.model_validate(DEFINITION)
    workload = Workload.model_validate({"uuid": "w", "axes": {"n": 3}, "inputs": {}})
    verdict = _judge(tmp_path).judge({
        "id": 7, "which": "check", "ref_key": "k", "path": None,
        "ipc": [{"dtype": "float32", "storage": "TypedStorage", "size": [3, 4], "stride": [4, 1], "offset": 0,
                 "device": 0, "handle": "AAAA", "size_bytes": 48, "offset_bytes": 0, "counter_handle": "AAAA",
                 "counter_offset": 0, "event_handle": None, "event_sync": False}],
        "definition": definition.model_dump(mode="json"), "workload": workload.model_dump(mode="json"),
        "tolerance": {"atol": 1e-5, "rtol": 1e-5, "required_matched_ratio": 1.0}})
    assert verdict["id"] == 7 and verdict["status"] is None and verdict["retry_file"] is True
    assert "CUDA IPC" in verdict["reason"]


class FakeChannel:
    def __init__(self, replies):
        self.sent, self.replies = [], list(replies)

    def send(self, kind, **fields):
        self.sent.append({"kind": kind, **json.loads(json.dumps(fields, default=str))})

    def recv(self):
        return self.replies.pop(0)


def test_the_worker_resends_the_same_outputs_as_a_file(tmp_path, monkeypatch):
    worker = SolutionWorker.__new__(SolutionWorker)
    worker.device, worker.out_dir, worker.pair, worker._shared = "cpu", tmp_path, 1, []
    worker.ipc = True  # as on a GPU: the first hand-over is IPC handles
    worker.definition = Definition.model_validate(DEFINITION)
    monkeypatch.setattr(ipc_mod, "share_cuda_tensor", lambda t: {"fake_handle_of": list(t.shape)})
    worker.channel = FakeChannel([{"kind": "verdict", "go": False, "resend": True},
                                  {"kind": "verdict", "go": True}])
    x = torch.ones(3, 4)
    failed = worker.checked_call(lambda inputs: [inputs["x"] * 2], {"x": x, "alpha": 2.0},
                                 {"x": x.clone(), "alpha": 2.0}, "check")
    assert failed is None and worker.ipc is False and worker._shared == []
    first, second = worker.channel.sent
    assert first["ipc"] == [{"fake_handle_of": [3, 4]}] and "path" not in first
    assert "ipc" not in second and second["path"].endswith("-1-check.safetensors")
    assert first["inputs_digest"] == second["inputs_digest"]
    from safetensors.torch import load_file
    assert torch.equal(load_file(second["path"])["out0"], x * 2)


def test_a_stop_verdict_after_a_file_is_judged(tmp_path):
    worker = SolutionWorker.__new__(SolutionWorker)
    worker.device, worker.out_dir, worker.pair, worker._shared, worker.ipc = "cpu", tmp_path, 2, [], False
    worker.definition = Definition.model_validate(DEFINITION)
    worker.channel = FakeChannel([{"kind": "verdict", "go": False}])
    x = torch.ones(3, 4)
    assert worker.checked_call(lambda inputs: [inputs["x"]], {"x": x}, {"x": x.clone()}, "fresh") == \
        {"status": "JUDGED"}
    assert "path" in worker.channel.sent[0]
