"""The FP32 reference cache: keyed by the device kind too, its report, and clearing it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fib.dataset import load_dataset
from fib.errors import FibError
from fib.harness.inputs import ReferenceCache, device_kind_of, make_inputs, reference_key
from tinydata import make_dataset


@pytest.fixture()
def tiny(tmp_path):
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    data = load_dataset([root])
    definition = data.definitions["scale_add"]
    return root, definition, data.workloads["scale_add"]


def get(cache, root, definition, workload, seed=1, **kw):
    inputs = make_inputs(definition, workload, seed=seed, device="cpu", root=root)
    outputs, seconds = cache.get(definition, workload, inputs, seed=seed, root=root, device="cpu", **kw)
    return inputs, outputs, seconds


def test_device_kind_of_cpu_and_cuda(monkeypatch):
    assert device_kind_of("cpu") == "cpu" and device_kind_of(torch.device("cpu")) == "cpu"
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: asked.append(i) or f"NVIDIA H200 #{i}")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert device_kind_of("cuda:1") == "NVIDIA H200 #1"
    assert device_kind_of("cuda") == "NVIDIA H200 #3"
    assert asked == [1, 3]


def test_key_depends_on_device_kind(tiny):
    root, definition, workloads = tiny
    w = workloads[0]
    cpu = reference_key(definition, w, 0, root)
    assert reference_key(definition, w, 0, root, device_kind="cpu") == cpu
    assert reference_key(definition, w, 0, root, device="cpu") == cpu
    h200 = reference_key(definition, w, 0, root, device_kind="NVIDIA H200")
    h100 = reference_key(definition, w, 0, root, device_kind="NVIDIA H100 80GB HBM3")
    assert len({cpu, h200, h100}) == 3
    assert reference_key(definition, w, 1, root) != cpu


def test_entries_are_per_device_kind_and_record_it(tmp_path, tiny):
    root, definition, workloads = tiny
    cache = ReferenceCache(tmp_path / "cache")
    inputs, outputs, _ = get(cache, root, definition, workloads[0])
    assert torch.allclose(outputs[0], inputs["x"] * inputs["alpha"] + 1.0)
    assert (cache.hits, cache.misses) == (0, 1)
    get(cache, root, definition, workloads[0])                      # device "cpu" -> kind "cpu": a hit
    get(cache, root, definition, workloads[0], device_kind="cpu")
    assert (cache.hits, cache.misses) == (2, 1)
    get(cache, root, definition, workloads[0], device_kind="NVIDIA H200")   # another kind: computed again
    assert (cache.hits, cache.misses) == (2, 2)
    sidecars = sorted((tmp_path / "cache" / "scale_add").glob("*.json"))
    kinds = sorted(json.loads(f.read_text())["device_kind"] for f in sidecars)
    assert kinds == ["NVIDIA H200", "cpu"]
    meta = json.loads(sidecars[0].read_text())
    assert meta["workload"] == workloads[0].uuid and meta["seed"] == 1 and meta["definition"] == "scale_add"
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_report_and_clear(tmp_path, tiny):
    root, definition, workloads = tiny
    cache = ReferenceCache(tmp_path / "cache")
    assert cache.report() == [] and cache.clear() == (0, 0)
    for w in workloads:
        get(cache, root, definition, w)
    other = tmp_path / "cache" / "other_def"
    other.mkdir()
    (other / "abc.safetensors").write_bytes(b"x" * 100)
    (other / "abc.json").write_bytes(b"{}")
    folder = tmp_path / "cache" / "scale_add"
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size > 0
    assert cache.report() == [("other_def", 1, 102), ("scale_add", 2, size)]

    assert cache.clear("no_such_definition") == (0, 0)
    with pytest.raises(FibError, match="not a definition name"):
        cache.clear("../x")
    assert cache.clear("scale_add") == (4, size)     # 2 entries x (.safetensors + .json)
    assert not folder.exists()
    assert cache.report() == [("other_def", 1, 102)]

    (other / "notes.txt").write_text("not the cache's")  # a file that is not ours stays
    assert cache.clear() == (2, 102)
    assert (other / "notes.txt").is_file()
    assert cache.report() == [("other_def", 0, len("not the cache's"))]


def test_default_directory_honours_fib_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FIB_CACHE_DIR", str(tmp_path / "c"))
    assert ReferenceCache().directory == tmp_path / "c" / "reference"
