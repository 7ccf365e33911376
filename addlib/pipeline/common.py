"""What every stage body reads: the prepared data, and the record of the params a result came from."""
from __future__ import annotations

import dataclasses
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


def section_names(p) -> list[str]:
    """The sections a (restricted) params object holds."""
    return [f.name for f in dataclasses.fields(p) if getattr(p, f.name) is not None]
