"""Where the pipeline reads and writes, and the two small writers every stage uses.

Imports nothing of the package (so every stage may depend on it without depending on anything else).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

DATA_DIR = Path("data/processed")      # the prepare stage's dataset and caption cache
REPORTS = Path("reports")              # small results kept in git (metrics, figures, the report)
MODELS = Path("models")                # the stages' models (DVC cache)
CHECKPOINTS = Path("checkpoints")      # resumable training state (ignored)
EXECUTED = REPORTS / "executed"        # the executed notebooks (DVC cache)


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_benchmark(out: str | Path | None, result: dict, table: str) -> None:
    """A benchmark's table on stdout; with ``out``, its result as JSON there and the table beside it (.md)."""
    print(table)
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(table)


CODE = ("addlib", "notebooks", "dvc.yaml")  # what a result's code version covers (params are recorded apart)


def code_version(root: Path = Path(".")) -> str:
    """The git commit the results come from, with ``+dirty`` if the code (CODE) differs from it. The outputs a
    run rewrites (dvc.lock, reports/) and params.yaml (recorded in full beside every result) do not count."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *CODE], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def executed_notebook(stage: str, key: str | None = None) -> Path:
    """Where the runner keeps a stage's executed notebook (``key``: the run of a foreach stage, ablation@key)."""
    return EXECUTED / (f"ablations/{key}.ipynb" if key is not None else f"{stage}.ipynb")
