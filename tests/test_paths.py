"""The code version written beside every result: the commit, marked dirty only when the code differs from it
(not when the run's own outputs, dvc.lock or params.yaml do)."""
import subprocess

from addlib.paths import code_version


def test_code_version_is_dirty_only_for_code(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for f in ["addlib/x.py", "notebooks/a.ipynb", "dvc.yaml", "dvc.lock", "params.yaml", "reports/m.json"]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("0\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(git + ["add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-qm", "c"], cwd=tmp_path, check=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True,
                         text=True).stdout.strip()
    assert code_version(tmp_path) == rev
    for f in ["dvc.lock", "params.yaml", "reports/m.json"]:  # what a run (or `dvc exp run -S`) rewrites
        (tmp_path / f).write_text("1\n")
    assert code_version(tmp_path) == rev
    for f in ["addlib/x.py", "notebooks/a.ipynb", "dvc.yaml", "addlib/new.py"]:
        (tmp_path / f).write_text("1\n")
        assert code_version(tmp_path) == rev + "+dirty", f
        subprocess.run(["git", "checkout", "-q", "--", f], cwd=tmp_path) if f != "addlib/new.py" else (tmp_path / f).unlink()
    assert code_version(tmp_path) == rev
