"""`fib cache info` / `fib cache clear` through typer's CliRunner, on a temporary FIB_CACHE_DIR."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fib.cli.app import app
from fib.cli.cache import human_size
from fib.dataset import load_dataset
from fib.harness.inputs import ReferenceCache, make_inputs
from tinydata import make_dataset


@pytest.fixture()
def cache_env(tmp_path, monkeypatch):
    """A cache with two real scale_add entries, one fake entry of another definition, and a
    solutions/ folder beside reference/."""
    monkeypatch.setenv("FIB_CACHE_DIR", str(tmp_path / "cache"))
    root = make_dataset(tmp_path / "ds", solutions=["good"])
    data = load_dataset([root])
    definition = data.definitions["scale_add"]
    cache = ReferenceCache()
    for w in data.workloads["scale_add"]:
        inputs = make_inputs(definition, w, seed=0, device="cpu", root=root)
        cache.get(definition, w, inputs, seed=0, root=root, device="cpu")
    other = tmp_path / "cache" / "reference" / "moe_big"
    other.mkdir()
    (other / "k.safetensors").write_bytes(b"x" * 1500)
    (other / "k.json").write_bytes(b"{}")
    (tmp_path / "cache" / "solutions" / "s-1").mkdir(parents=True)
    (tmp_path / "cache" / "solutions" / "s-1" / "main.py").write_text("x = 1\n")
    scale_add = sum(f.stat().st_size for f in (tmp_path / "cache" / "reference" / "scale_add").iterdir())
    return tmp_path / "cache", scale_add


def invoke(*args, input=None):
    return CliRunner().invoke(app, ["cache", *args], input=input, env={"COLUMNS": "250"})


def test_human_size():
    assert [human_size(n) for n in (0, 999, 1000, 1502, 2_500_000, 3 * 10**9)] == \
        ["0 B", "999 B", "1.0 kB", "1.5 kB", "2.5 MB", "3.0 GB"]


def test_info_lists_definitions_path_and_total(cache_env):
    base, scale_add = cache_env
    result = invoke("info")
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"reference cache: {base / 'reference'}" in out
    rows = [line.split("│")[1:4] for line in out.splitlines() if "│" in line]
    cells = [[c.strip() for c in row] for row in rows]
    assert cells == [["moe_big", "1", "1.5 kB"], ["scale_add", "2", human_size(scale_add)]]
    assert [c.strip() for c in next(line for line in out.splitlines() if "┃" in line).split("┃")[1:4]] \
        == ["definition", "entries", "size"]
    assert f"total: 3 entries, {human_size(scale_add + 1502)} in 2 definition(s)" in out
    assert "(not touched by `fib cache clear`): solutions/ 6 B" in out


def test_info_on_an_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FIB_CACHE_DIR", str(tmp_path / "nothing"))
    result = invoke("info")
    assert result.exit_code == 0
    assert f"reference cache: {tmp_path / 'nothing' / 'reference'}" in result.output
    assert "total: 0 entries, 0 B in 0 definition(s)" in result.output


def test_clear_one_definition(cache_env):
    base, scale_add = cache_env
    result = invoke("clear", "--definition", "scale_add", "--yes")
    assert result.exit_code == 0, result.output
    assert f"removed scale_add: 2 entries (4 files, {human_size(scale_add)})" in result.output
    assert f"removed 4 files, {human_size(scale_add)} from {base / 'reference'}" in result.output
    assert not (base / "reference" / "scale_add").exists()
    assert (base / "reference" / "moe_big" / "k.safetensors").is_file()
    assert ReferenceCache().report() == [("moe_big", 1, 1502)]


def test_clear_all_asks_first(cache_env):
    base, scale_add = cache_env
    declined = invoke("clear", input="n\n")
    assert declined.exit_code == 1
    assert f"remove 3 cached reference(s) ({human_size(scale_add + 1502)}) from {base / 'reference'}?" \
        in declined.output
    assert "nothing removed" in declined.output and len(ReferenceCache().report()) == 2
    accepted = invoke("clear", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "removed moe_big: 1 entries (2 files, 1.5 kB)" in accepted.output
    assert f"removed 6 files, {human_size(scale_add + 1502)}" in accepted.output
    assert ReferenceCache().report() == []
    assert (base / "solutions" / "s-1" / "main.py").is_file()   # only the reference cache is cleared


def test_clear_when_nothing_matches(cache_env):
    base, _ = cache_env
    result = invoke("clear", "--definition", "../solutions", "--yes")
    assert result.exit_code == 0
    assert "nothing to remove: no cached references for ../solutions" in result.output
    assert (base / "solutions" / "s-1" / "main.py").is_file()


def test_cache_help():
    result = CliRunner().invoke(app, ["cache", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "info" in result.output and "clear" in result.output
