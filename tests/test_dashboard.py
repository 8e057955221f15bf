"""Dashboard: the static site's content, and (when chromium is installed) that it renders from
file:// in a real headless browser with no console messages."""
from __future__ import annotations

import re
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from fib.cli.history import dashboard_command
from fib.results.dashboard import SiteOptions, build_dashboard
from fib.results.history import HistoryDB, load_run_dir
from test_history import commit_sha, make_run_dir, make_trace, samples

STAGES = ("solution,workload,stage,kernel,instances,total_ms\n"
          "triton,w1,routing,topk,1,0.1\ntriton,w1,gemm1,gemm_a,2,0.5\ntriton,w1,gemm2,gemm_b,2,0.3\n"
          "torch,w1,routing,topk,1,0.2\ntorch,w1,gemm1,mm,4,0.9\n")


@pytest.fixture
def history(tmp_path) -> Path:
    """8 runs on main: triton w1 steps up 25% at run 5; torch is the steady baseline; run 7 of
    triton w2 fails; the last run has a stage table."""
    rng = np.random.default_rng(0)
    db_path = tmp_path / "h.db"
    with HistoryDB(db_path) as db:
        for i in range(8):
            traces = [make_trace("moe", "triton", "w1", samples_ms=samples(rng, 1.0 if i < 5 else 1.25, n=20)),
                      make_trace("moe", "triton", "w2", samples_ms=samples(rng, 3.0, n=20)),
                      make_trace("moe", "torch", "w1", samples_ms=samples(rng, 2.0, n=20)),
                      make_trace("moe", "torch", "w2", samples_ms=samples(rng, 4.0, n=20)),
                      make_trace("rmsnorm", "triton", "r1", samples_ms=samples(rng, 0.1, n=20))]
            if i == 7:
                traces[1] = make_trace("moe", "triton", "w2", status="INCORRECT_NUMERICAL", matched_ratio=0.7)
            d = make_run_dir(tmp_path / f"run{i}", commit_sha(i), traces, started=f"2025-02-{i + 1:02d}T10:00:00Z",
                             stages_csv=STAGES if i == 7 else None)
            if i == 7:
                (d / "report.md").write_text("# report\n")
            db.add_run(load_run_dir(d)[0])
    return db_path


def _build(history, out):
    with HistoryDB(history) as db:
        return build_dashboard(db, out, SiteOptions(baseline_solution="torch"))


def test_site_content(history, tmp_path):
    pages = _build(history, tmp_path / "site")
    assert [p.name for p in pages] == ["index.html", "def-moe.html", "def-rmsnorm.html"]
    index = pages[0].read_text()
    # overview: latest status and ratios
    assert "1/2 passed (INCORRECT_NUMERICAL)" in index and "2/2 passed" in index
    ratio = re.search(r"([0-9.]+)x vs torch", index)
    assert ratio and float(ratio.group(1)) == pytest.approx(1.25 / 2.0, abs=0.02)
    # the change point, tied to its commit
    cp_table = index.split('class="changepoints"')[1].split("</table>")[0]
    assert commit_sha(5)[:8] in cp_table and "+25." in cp_table and cp_table.count("<tr>") == 2
    assert "report.md" in index and "run dir" in index
    moe = pages[1].read_text()
    assert moe.count('<svg class="trend"') == 2  # one chart per workload
    assert moe.count('class="pt"') == 8 * 4 - 1  # every passed point; the failed one is a cross
    assert moe.count('class="failed"') == 1 and moe.count('class="changepoint"') == 1
    assert f"triton @ {commit_sha(3)[:8]} (main)\n2025-02-04T10:00:00Z\nmedian" in moe
    assert "95% CI [" in moe
    stages = moe.split('<svg class="stages"')[1]
    assert stages.count('class="seg"') == 5 and "triton · w1: " not in stages
    assert "triton · w1 · gemm1: 0.5 ms" in stages
    assert '<svg class="stages"' not in pages[2].read_text()  # no stage table for rmsnorm: skipped
    for page in pages:  # nothing fetched from a network
        assert not re.search(r'(src|href)="(https?:)?//', page.read_text())


def test_dashboard_command(history, tmp_path):
    app = typer.Typer()
    app.command()(dashboard_command)
    runner = CliRunner()
    res = runner.invoke(app, ["--db", str(history), "--output", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s" / "index.html").is_file()
    assert runner.invoke(app, ["--db", str(tmp_path / "none.db"), "-o", str(tmp_path / "t")]).exit_code == 2


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000"]


def _chromium(page: Path, tmp_path: Path, *extra: str) -> tuple[str, list[str]]:
    """DOM after scripts ran, and the console messages the page logged (chromium prints them as
    `INFO:CONSOLE...] "message", source: file:///...`)."""
    profile = tmp_path / f"profile-{page.stem}-{len(extra)}"
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


# CI sets FIB_REQUIRE_CHROMIUM=1 (and installs it): there a missing browser is a failure, not a skip.
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("FIB_REQUIRE_CHROMIUM"),
                    reason="chromium not installed")
def test_site_renders_in_headless_chromium(history, tmp_path):
    pages = _build(history, tmp_path / "site")
    # control: the console capture does see an error, a blocked network load and a console.error
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
                   "content=\"default-src 'none'; script-src 'unsafe-inline'\"></head><body>"
                   '<img src="https://example.invalid/x.png"><script>console.error("boom");'
                   'throw new Error("kaput")</script></body></html>')
    _, console = _chromium(bad, tmp_path, "--dump-dom")
    assert any("Uncaught Error: kaput" in c for c in console) and any("boom" in c for c in console)
    assert any("Content Security Policy" in c for c in console)
    for page in pages:
        dom, console = _chromium(page, tmp_path, "--dump-dom")
        assert console == [], f"{page.name}: {console}"
        n_svg = dom.count("<svg")
        assert f'data-charts="{n_svg}"' in dom  # the inline script ran
        assert n_svg >= (1 if page.name.startswith("def-") else 0)
    dom, _ = _chromium(pages[1], tmp_path, "--dump-dom")
    assert dom.count('class="pt"') == 31 and dom.count('class="changepoint"') == 1
    shot = tmp_path / "dashboard.png"
    _chromium(pages[1], tmp_path, f"--screenshot={shot}", "--window-size=1300,1200")
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
