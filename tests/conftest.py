"""Shared fixtures: the smoke profile's config (params.yaml + profiles/smoke.yaml, the same code path as a
real run) and tiny random data, so unit tests run in seconds on a CPU, offline."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture()
def smoke_params():
    from addlib import config

    return config.load(ROOT / "params.yaml", ROOT / "profiles" / "smoke.yaml")


@pytest.fixture()
def tiny_data():
    """16 1x8x8 images, one fixed random pattern per caption (3 captions, so there is something to learn),
    and a random text cache (row 0 = empty prompt)."""
    from addlib.data import TRAIN, Dataset
    from addlib.text import TextCache

    g = torch.Generator().manual_seed(0)
    patterns = torch.randint(0, 256, (3, 1, 8, 8), generator=g, dtype=torch.uint8)
    images = patterns[torch.arange(16) % 3]
    captions = [["a", "b", "c"][i % 3] for i in range(16)]
    ds = Dataset(images, torch.arange(16) % 3, captions, torch.full((16,), TRAIN, dtype=torch.uint8))
    cache = TextCache(["", "a", "b", "c"], torch.randn(4, 4, 16, generator=g),
                      torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]]).float(),
                      torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1))
    return ds, cache
