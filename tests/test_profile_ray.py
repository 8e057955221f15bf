"""`fib profile --cluster ray` on the session's local Ray cluster with fake GPUs (tests/conftest.py):
the torch.profiler capture of the small CPU MoE definition runs on one actor per GPU kind, its files
come back through the object store and match a local profile's; a node without nsys/ncu is refused
with its host and the backend named; a local profile never imports Ray. Skipped without Ray."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("ray")

from typer.testing import CliRunner  # noqa: E402

from fib.cli.app import app, expand_list_args  # noqa: E402

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parent.parent
DEFINITION = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e8_h512_i256"
ARGS = ["profile", "-d", DEFINITION, "-s", "torch_eager", "-w", "seq_len=1", "seq_len=3", "--backend", "torch",
        "--iterations", "2", "--warmup", "1", "--local", str(REPO)]
TABLES = ("calls.csv", "kernels.csv", "stages.csv", "leftout.csv")


def invoke(args: list[str]):
    return CliRunner().invoke(app, expand_list_args(args))


def local_profile(output: Path) -> bool:
    """A local `fib profile` of ARGS into `output`, in a process of its own; True if it imported Ray."""
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom fib.cli.app import app, expand_list_args\n"
            f"r = CliRunner().invoke(app, expand_list_args({ARGS + ['--device', 'cpu', '-o', str(output)]!r}))\n"
            "assert r.exit_code == 0, r.output\nprint('ray' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1] == "True"


def call_ranges(trace: Path) -> list[str]:
    events = json.loads(trace.read_text())["traceEvents"]
    return sorted(e["name"] for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("fib.call/"))


def test_cluster_profile_per_kind_matches_a_local_profile(ray_cluster, tmp_path):
    _, nodes, _ = ray_cluster
    assert local_profile(tmp_path / "local") is False  # no --cluster: Ray is never imported
    result = invoke(ARGS + ["--cluster", "ray", "--gpus", "H100,H200", "-o", str(tmp_path / "cl")])
    assert result.exit_code == 0, result.output
    local = tmp_path / "local" / "profile"
    local_meta = json.loads((local / "meta.json").read_text())
    assert len(local_meta["pairs"]) == 2
    for kind in ("H100", "H200"):
        run_dir = tmp_path / "cl" / kind
        assert f"report: fib report stages {run_dir}" in result.output
        shipped = run_dir / "profile"
        # the same files and tables as the local profile: the capture came back whole
        assert sorted(p.name for p in shipped.iterdir()) == sorted(p.name for p in local.iterdir())
        assert (shipped / "calls.csv").read_text() == (local / "calls.csv").read_text()
        for table in TABLES:
            assert list(pd.read_csv(shipped / table).columns) == list(pd.read_csv(local / table).columns), table
        assert call_ranges(shipped / "trace.json") == call_ranges(local / "trace.json")
        assert len(call_ranges(shipped / "trace.json")) == 4  # 2 workloads x 2 calls
        meta = json.loads((shipped / "meta.json").read_text())
        assert meta["pairs"] == local_meta["pairs"] and meta["backend"] == "torch" and meta["iterations"] == 2
        # where it ran: host, the Ray node of that kind, the GPU and the driver (none on a CPU node)
        where = meta["cluster"]
        assert where["engine"] == "ray" and where["gpu_kind"] == kind and where["node"] == nodes[kind].node_id[:16]
        assert where["host"] == socket.gethostname() and where["gpu"] == "cpu" and "driver" in where
        assert where["shipped_files"] == len(list(shipped.iterdir()))
        assert where["shipped_bytes"] > (shipped / "trace.json").stat().st_size > 0
        # node paths are rewritten to the driver's: what meta.json names exists here
        assert meta["trace"] == str((shipped / "trace.json").resolve()) and Path(meta["trace"]).is_file()
        assert where["node_run_dir"] not in json.dumps({k: v for k, v in meta.items() if k != "cluster"})
        # the shipped CPU profile has no device kernels: `fib report stages` says so instead of failing
        from fib.report.stages import report_stages
        report = report_stages([run_dir], tmp_path / f"report-{kind}").read_text()
        assert "## No device kernels were captured" in report and f"(GPU kind {kind})" in report


def test_node_without_the_profiler_is_named(ray_cluster, tmp_path, monkeypatch):
    from fib.errors import ClusterError
    from fib.profile.cluster import run_profile
    _, nodes, _ = ray_cluster
    fake = tmp_path / "nsys"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FIB_NSYS", str(fake))  # the driver has "nsys"; the nodes (started before) do not
    options = dict(definitions=[DEFINITION], solutions=["torch_eager"], workloads=["seq_len=1"], iterations=1,
                   warmup=0, roots=[REPO])
    with pytest.raises(ClusterError) as info:
        run_profile(cluster="ray", gpus=["H200"], output=tmp_path / "nsys_run", backend="nsys", **options)
    text = str(info.value)
    assert f"host {socket.gethostname()}" in text and nodes["H200"].node_id[:12] in text
    assert "no nsys (Nsight Systems) for --backend nsys" in text and "--backend torch" in text
    assert not (tmp_path / "nsys_run").exists()  # refused before anything was shipped or captured
    result = invoke(ARGS + ["--cluster", "ray", "--backend", "ncu", "-o", str(tmp_path / "ncu_run")])
    assert result.exit_code == 1 and "no ncu (Nsight Compute) for --backend ncu" in result.output
    assert "Ray node" in result.output and not (tmp_path / "ncu_run").exists()


def test_cluster_options_of_profile():
    result = invoke(ARGS + ["--gpus", "H100"])
    assert result.exit_code == 1 and "--gpus" in result.output and "--cluster ray" in result.output
    result = invoke(ARGS + ["--cluster", "ray", "--device", "cuda:1"])
    assert result.exit_code == 1 and "--device" in result.output
    result = invoke(["profile", "-d", DEFINITION, "-s", "no_such_solution", "--cluster", "ray", "--local", str(REPO)])
    assert result.exit_code == 1 and "no_such_solution" in result.output


def test_missing_profiler_rule():
    from fib.profile.ray_profile import missing_profiler
    lacking = {"profilers": {"nsys": None, "ncu": "/usr/local/cuda/bin/ncu"}}
    assert "host h1 has no nsys" in str(missing_profiler("nsys", lacking, "host h1"))
    assert missing_profiler("ncu", lacking, "host h1") is None
    assert missing_profiler("torch", {}, "host h1") is None and missing_profiler("auto", {}, "host h1") is None


def test_files_travel_in_pieces(ray_cluster, tmp_path, monkeypatch):
    import fib.profile.ray_profile as ray_profile
    monkeypatch.setattr(ray_profile, "PIECE_BYTES", 1000)
    source = tmp_path / "node" / "profile"
    (source / "sub").mkdir(parents=True)
    payload = os.urandom(2500)
    (source / "capture.sqlite").write_bytes(payload)
    (source / "sub" / "empty.txt").write_bytes(b"")
    files = ray_profile.ship_files(source)
    assert [len(files[name]["pieces"]) for name in sorted(files)] == [3, 0]
    written = ray_profile.receive_files(files, tmp_path / "driver")
    assert written == 2500 and (tmp_path / "driver" / "capture.sqlite").read_bytes() == payload
    assert (tmp_path / "driver" / "sub" / "empty.txt").read_bytes() == b""


def test_ray_errors_show_the_exception_raised_on_the_node():
    import ray
    from fib.profile.ray_profile import ray_error_text
    task_error = ray.exceptions.RayTaskError("profile", "traceback text", TimeoutError("the child ran 3600 s"))
    assert ray_error_text(task_error) == "TimeoutError: the child ran 3600 s"
    assert ray_error_text(ray.exceptions.RayActorError()).startswith("RayActorError: ")
