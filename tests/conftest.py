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
    from tiny_models import tiny_digits

    return tiny_digits(16)
