"""Which commit a run records: git's own answer, unless the sender names the commit."""
import subprocess

from fib.env import git_info


def test_fib_git_commit_wins_over_a_stale_git(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "m"],
                   check=True)
    own = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    monkeypatch.delenv("FIB_GIT_COMMIT", raising=False)
    assert git_info(tmp_path)["commit"] == own
    monkeypatch.setenv("FIB_GIT_COMMIT", "b" * 40)
    info = git_info(tmp_path)
    assert info["commit"] == "b" * 40 and info["source"] == "FIB_GIT_COMMIT"


def test_no_git_and_nobody_said(tmp_path, monkeypatch):
    monkeypatch.delenv("FIB_GIT_COMMIT", raising=False)
    assert git_info(tmp_path / "nowhere")["commit"] is None
