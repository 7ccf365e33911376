"""What every stage body reads: the prepared data, and the record of the params a result came from."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import data as D
from ..paths import DATA_DIR
from ..text import TextCache


def load_prepared(root: Path = Path(".")) -> tuple[D.Dataset, TextCache]:
    """The prepare stage's dataset and caption-embedding cache."""
    return D.Dataset.load(root / DATA_DIR), TextCache.load(root / DATA_DIR)


def has_labels(ds: D.Dataset) -> bool:
    """Whether every image has a class label and there are at least two classes (the in-domain metrics)."""
    return bool((ds.labels >= 0).all()) and len(set(ds.labels.tolist())) > 1


def sections(p, *names: str) -> dict:
    """The named sections of the typed params, for the resolved config written beside a result."""
    return {n: getattr(p, n) for n in names}


def prune_checkpoints(*run_dirs: Path) -> None:
    """Once a stage's outputs are written, the checkpoints of the runs it trained go (a rerun with the same inputs
    is restored from DVC's cache, not resumed); other configurations' checkpoints stay. ADDLIB_KEEP_CHECKPOINTS=1
    keeps them all."""
    if os.environ.get("ADDLIB_KEEP_CHECKPOINTS", "0") not in ("", "0"):
        return
    for d in run_dirs:
        shutil.rmtree(d, ignore_errors=True)
