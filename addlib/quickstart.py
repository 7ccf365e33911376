"""The quick start: the whole pipeline end to end at tiny sizes, in a sandbox, leaving the project as it is.

    python -m addlib.quickstart [--profile profiles/quickstart.yaml] [--dir .quickstart] [--fresh]
    (make quickstart)

Copies the project's files (not its results: reports/, models/, data/processed/) into ``--dir`` (git-ignored),
merges the profile over the copy's params.yaml, makes the copy a git repository (DVC and the recorded code
version need one), runs ``dvc repro`` there, and prints the report page to open. params.yaml, its comments and
the committed results of the project are untouched. A second call reruns only what changed (``--fresh``
starts over). The profile's ``ablations.runs`` and ``ablations.tables`` replace the project's (a profile is
otherwise merged key by key), so the quick start trains a few ablation rows, not all of Table 1.

Its numbers come from minutes of training on tiny networks: they show that every stage runs and what it writes,
not how well ADD works (docs/results.md has the default run's).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from . import config as C
from .config import checks

RESULTS = ("reports/", "models/", "data/processed", "checkpoints/")
GIT = ["git", "-c", "user.name=addlib", "-c", "user.email=addlib@localhost"]


def project_files(root: Path) -> list[str]:
    """The project's tracked and untracked-but-not-ignored files, without its results."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    return [f for f in out if not f.startswith(RESULTS) and (root / f).is_file()]


def make_sandbox(root: Path, dest: Path, profile: Path) -> Path:
    """dest: a copy of the project with the profile applied, committed to its own git repository."""
    over = C.read_yaml(profile)
    raw = C.apply_profile(C.read_yaml(root / "params.yaml"), over)
    for key in ("runs", "tables"):  # replaced, not merged: the quick start's own ablation rows
        if key in over.get("ablations", {}):
            raw["ablations"][key] = over["ablations"][key]
    checks.parse(raw, f"{profile} over params.yaml")  # a bad profile is one line, before anything is copied or run
    dest.mkdir(parents=True, exist_ok=True)
    for f in project_files(root):
        if (dest / f).exists() and (dest / f).read_bytes() == (root / f).read_bytes():
            continue  # unchanged: DVC sees the same file
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, dest / f)
    text = yaml.safe_dump(raw, sort_keys=False)
    if not (dest / "params.yaml").exists() or (dest / "params.yaml").read_text() != text:
        (dest / "params.yaml").write_text(text)
    if not (dest / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(GIT + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(GIT + ["commit", "-qm", "quick start", "--allow-empty"], cwd=dest, check=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m addlib.quickstart", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="profiles/quickstart.yaml")
    ap.add_argument("--dir", default=".quickstart", help="the sandbox (git-ignored)")
    ap.add_argument("--fresh", action="store_true", help="delete the sandbox first")
    a = ap.parse_args(argv)
    root, dest = Path.cwd(), Path(a.dir)
    if not (root / "dvc.yaml").is_file():
        ap.error("run from the project's root (where dvc.yaml is)")
    if a.fresh and dest.exists():
        shutil.rmtree(dest)
    try:
        make_sandbox(root, dest, Path(a.profile))
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=dest, env=env)
    if r.returncode:
        return r.returncode
    print(f"\nquick start done: open {dest / 'reports' / 'html' / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
