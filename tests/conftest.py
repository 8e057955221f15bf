"""Fixtures shared by test modules: one local Ray cluster for every Ray test of a session (Ray's
start-up costs seconds on a small CPU machine)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A head without GPUs and two worker nodes of two fake GPUs each, of kinds H100 and H200 (Ray's
    `accelerator_type:<kind>` node resource); `ray.init` connected to it. Yields (cluster, {kind:
    node}, base folder). Skipped without Ray."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster
    base = tmp_path_factory.mktemp("ray")
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "FIB_RAY_NODE_DIR": str(base / "nodes")}
    os.environ["FIB_RAY_NODE_DIR"] = env["FIB_RAY_NODE_DIR"]
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3}})
    nodes = {kind: c.add_node(num_cpus=2, num_gpus=2, resources={f"accelerator_type:{kind}": 1})
             for kind in ("H100", "H200")}
    ray.init(address=c.address, runtime_env={"env_vars": env}, log_to_driver=False)
    yield c, nodes, base
    ray.shutdown()
    c.shutdown()
